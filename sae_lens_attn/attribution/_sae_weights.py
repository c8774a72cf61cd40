"""Reading feature weights off an SAE without densifying block-diagonal ones."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sae_lens import SAE


def is_block_diagonal(sae: SAE) -> bool:
    """True for SAEs that store per-head blocks (`W_enc_blocks [H, d_head, m]`)."""
    return hasattr(sae, "W_enc_blocks") and hasattr(sae, "W_dec_blocks")


def resolve_features(sae: SAE, features: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    """Feature indices as a LongTensor on the SAE's device; all features when None."""
    d_sae = sae.cfg.d_sae
    device = sae.b_dec.device
    if features is None:
        return torch.arange(d_sae, device=device)
    index = torch.as_tensor(features, dtype=torch.long, device=device).reshape(-1)
    if index.numel() and (index.min() < 0 or index.max() >= d_sae):
        bad = index[(index < 0) | (index >= d_sae)][0].item()
        raise ValueError(f"feature {bad} is out of range; this SAE has features 0..{d_sae - 1}")
    return index


def encoder_columns(sae: SAE, index: torch.Tensor) -> torch.Tensor:
    """`W_enc[:, index]` as `[d_in, n_features]`, built from the blocks when block-diagonal."""
    if not is_block_diagonal(sae):
        return sae.W_enc[:, index]
    blocks = sae.W_enc_blocks  # [H, d_head, m]
    n_heads, d_head, per_head = blocks.shape
    head, local = index // per_head, index % per_head
    columns = torch.zeros(len(index), n_heads, d_head, dtype=blocks.dtype, device=blocks.device)
    columns[torch.arange(len(index), device=blocks.device), head] = blocks[head, :, local]
    return columns.flatten(1).T


# Parameters with one entry per feature in SAELens's standard, JumpReLU and gated SAEs
# (`W_enc` has features as its last axis); their `encode` reads nothing else per feature.
_FEATURE_VECTORS = ("b_enc", "threshold", "b_gate", "b_mag", "r_mag")


def features_encode_independently(sae: SAE) -> bool:
    """True when `type(sae).encode` is SAELens's standard, JumpReLU or gated `encode`, in
    which each feature's activation depends on its own encoder column and biases only
    (not TopK, not a subclass that changed `encode`)."""
    from sae_lens import GatedSAE, JumpReLUSAE, StandardSAE

    encode = getattr(type(sae), "encode", None)
    return any(encode is cls.encode for cls in (StandardSAE, JumpReLUSAE, GatedSAE))


def column_view(sae: SAE, columns: torch.Tensor) -> SAE:
    """A shallow copy of `sae` whose per-feature parameters are those of `columns` only;
    it shares the original's modules (hooks) and config, and changes nothing of it."""
    view = copy.copy(sae)
    parameters = dict(sae._parameters)
    parameters["W_enc"] = parameters["W_enc"][:, columns]
    for name in _FEATURE_VECTORS:
        if parameters.get(name) is not None:
            parameters[name] = parameters[name][columns]
    view.__dict__["_parameters"] = parameters
    return view


def decoder_rows(sae: SAE, index: torch.Tensor) -> torch.Tensor:
    """`W_dec[index]` as `[n_features, d_in]`, built from the blocks when block-diagonal."""
    if not is_block_diagonal(sae):
        return sae.W_dec[index].detach()
    blocks = sae.W_dec_blocks.detach()  # [H, m, d_head]
    n_heads, per_head, d_head = blocks.shape
    head, local = index // per_head, index % per_head
    rows = torch.zeros(len(index), n_heads, d_head, dtype=blocks.dtype, device=blocks.device)
    rows[torch.arange(len(index), device=blocks.device), head] = blocks[head, local]
    return rows.flatten(1)
