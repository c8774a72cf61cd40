"""The SAE encoder of one feature as an affine map of its raw input.

SAELens computes `pre = (norm(x) - b_dec * apply_b_dec_to_input) @ W_enc + b_enc`. With
the run-time normalisation frozen at the destination token, this is
`pre_j = scale * (x @ column) + centring + b_enc[j]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.attribution._sae_weights import encoder_columns, resolve_features
from sae_lens_attn.attribution.dfa import _PER_TOKEN_NORMALISATIONS, _per_token_scale

if TYPE_CHECKING:
    from sae_lens import SAE


@dataclass(frozen=True)
class EncoderTerms:
    """`pre_j = scale * (x @ column) + centring + b_enc` for one feature and one token.

    `column [d_in]`: W_enc[:, j], centred over d_in for `layer_norm` normalisation.
    `scale`: the frozen input scaling (1 without run-time normalisation).
    `centring`: `-b_dec @ W_enc[:, j]` when the SAE applies b_dec to its input, else 0.
    """

    column: torch.Tensor
    scale: float
    centring: float
    b_enc: float


def encoder_terms(sae: SAE, x: torch.Tensor, feature: int) -> EncoderTerms:
    """Feature `feature`'s encoder at raw SAE input `x [d_in]` (one token), with the
    conventions of `dfa.feature_dfa` (its column reader and per-token scale)."""
    index = resolve_features(sae, [feature])
    raw_column = encoder_columns(sae, index)[:, 0].detach()
    mode = sae.cfg.normalize_activations
    column = raw_column - raw_column.mean() if mode == "layer_norm" else raw_column
    scale = 1.0
    if mode in _PER_TOKEN_NORMALISATIONS:
        scale = _per_token_scale(sae, x.to(sae.dtype)[None]).item()
    centring = -(sae.b_dec.detach() @ raw_column).item() * float(sae.cfg.apply_b_dec_to_input)
    return EncoderTerms(column, scale, centring, sae.b_enc[feature].item())
