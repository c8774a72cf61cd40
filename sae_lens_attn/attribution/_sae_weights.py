"""Reading feature weights off an SAE without densifying block-diagonal ones."""

from __future__ import annotations

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
