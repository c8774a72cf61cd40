"""What a detector is, and the few things every built-in detector needs.

A detector is any object with `name`, `description` and `detect(model, sae, layout,
**options) -> list[FamilyRow]` (one row per analysed feature); it may also have
`figures(rows, model=None) -> dict[str, plotly Figure]`, which the `detect` command saves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from sae_lens_attn.attribution._sae_weights import column_view, features_encode_independently
from sae_lens_attn.detectors.classes import FamilyRow
from sae_lens_attn.models.token_display import quoted
from sae_lens_attn.sources.head_layout import HeadLayout

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


__all__ = [
    "DEAD_SUMMARY",
    "Detector",
    "dead_feature_row",
    "display_token",
    "encode_hook_z",
    "encode_hook_z_columns",
    "feature_index",
    "resolve_layout",
    "token_strings_of",
]

DEAD_SUMMARY = "dead: zero or non-finite decoder row"


@runtime_checkable
class Detector(Protocol):
    """A feature-family detector (plugin kind "detector")."""

    name: str
    description: str

    def detect(
        self, model: HookedTransformer, sae: SAE, layout: HeadLayout | None = None, **options: Any
    ) -> list[FamilyRow]:
        """One `FamilyRow` per feature analysed (all features unless `features=` is given)."""
        ...


def resolve_layout(sae: SAE, model: HookedTransformer, layout: HeadLayout | None) -> HeadLayout:
    """`layout`, or the SAE's own (`HeadLayout.from_sae`) when None."""
    return layout if layout is not None else HeadLayout.from_sae(sae, model)


def feature_index(sae: SAE, features: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    """The features to analyse as a sorted LongTensor (all when None); a ValueError names
    the valid range."""
    d_sae = sae.cfg.d_sae
    if features is None:
        return torch.arange(d_sae)
    index = torch.as_tensor(features, dtype=torch.long).reshape(-1).unique()
    if index.numel() == 0:
        raise ValueError("features is empty: give feature indices, or None for all")
    if index[0] < 0 or index[-1] >= d_sae:
        raise ValueError(f"feature indices must be in 0..{d_sae - 1}, got {index.tolist()[:10]}")
    return index


def dead_feature_row(detector: str, feature: int) -> FamilyRow:
    """The row of a feature whose decoder row is zero or non-finite (`dead_rows`): not
    live, no family, no score (NaN, saved as null)."""

    return FamilyRow(detector, int(feature), None, math.nan, {"live": False, "summary": DEAD_SUMMARY})


def encode_hook_z(sae: SAE, x: torch.Tensor, layout: HeadLayout) -> torch.Tensor:
    """Feature activations `[..., d_sae]` of SAE inputs `x [..., n_heads * d_head]`.

    SAELens SAEs with `reshape_activations="hook_z"` take `[..., n_heads, d_head]` (and
    flatten it themselves); others take the flat input.
    """
    if getattr(sae, "hook_z_reshaping_mode", False):
        x = layout.split(x)
    return sae.encode(x.to(sae.dtype))


def encode_hook_z_columns(sae: SAE, x: torch.Tensor, layout: HeadLayout, columns: torch.Tensor) -> torch.Tensor:
    """`encode_hook_z(sae, x, layout)[..., columns]` as `[..., len(columns)]`, computing
    only those features where each feature encodes on its own (SAELens's standard,
    JumpReLU and gated SAEs: a fraction of the encoder's work when `columns` are few);
    other SAEs (TopK, block-diagonal) encode every feature and select."""
    columns = columns.to(sae.b_dec.device)
    if not features_encode_independently(sae):
        return encode_hook_z(sae, x, layout)[..., columns]
    return encode_hook_z(column_view(sae, columns), x, layout)


def token_strings_of(model: HookedTransformer) -> list[str] | None:
    """Every output token as display text (`display_vocabulary`: readable bytes, visible
    whitespace), for evidence and summaries; None when the model has no tokenizer."""
    from sae_lens_attn.models.token_display import display_vocabulary

    tokenizer = getattr(model, "tokenizer", None)
    return None if tokenizer is None else display_vocabulary(tokenizer, model.W_U.shape[1])


def display_token(strings: Sequence[str] | None, token: int) -> str:
    """How evidence strings show a token: its display text quoted (`quoted`), or `token N`
    without a tokenizer. The one place detector evidence shows a token."""
    return quoted(strings[token]) if strings is not None and 0 <= token < len(strings) else f"token {token}"
