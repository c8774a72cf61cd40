"""Head attribution: how much of each feature's weight lives in each attention head.

A hook_z SAE's input is `n_heads` slices of `d_head` (head-major, see `HeadLayout`), so a
feature's decoder row (and encoder column) splits into one slice per head. As in Kissane et
al.'s code and sae_dashboard's `get_decoder_weights_distribution`, the attribution of
feature j to head h is `||W_dec[j, h-slice]|| / sum_h' ||W_dec[j, h'-slice]||` (L2 norms).
For block-diagonal SAEs it is exactly one-hot and is read off the blocks, never from a
densified matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch

from sae_lens_attn.attribution._sae_weights import is_block_diagonal, resolve_features

if TYPE_CHECKING:
    from sae_lens import SAE

__all__ = [
    "decoder_head_attribution",
    "encoder_head_attribution",
    "sae_head_attribution",
]


def _norm_fractions(rows: torch.Tensor, n_heads: int) -> torch.Tensor:
    """`[n, n_heads * d_head]` -> `[n, n_heads]` L2-norm fractions; all-zero rows stay zero."""
    if rows.ndim != 2 or n_heads <= 0 or rows.shape[1] % n_heads:
        raise ValueError(
            f"expected a 2-D weight whose width is a multiple of n_heads={n_heads}, "
            f"got shape {list(rows.shape)}"
        )
    norms = rows.unflatten(1, (n_heads, -1)).norm(dim=-1)
    total = norms.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, norms / total.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)


def decoder_head_attribution(W_dec: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Decoder-norm fraction per head.

    `W_dec [d_sae, n_heads * d_head]` -> `[d_sae, n_heads]`; each row sums to 1 (a feature
    whose decoder row is all zeros gets a row of zeros).
    """
    return _norm_fractions(W_dec, n_heads)


def encoder_head_attribution(W_enc: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Encoder-norm fraction per head (which heads a feature reads from).

    `W_enc [n_heads * d_head, d_sae]` -> `[d_sae, n_heads]`; rows sum to 1 (all-zero
    columns give rows of zeros).
    """
    if W_enc.ndim != 2:
        raise ValueError(f"expected W_enc [d_in, d_sae], got shape {list(W_enc.shape)}")
    return _norm_fractions(W_enc.T, n_heads)


@torch.no_grad()
def sae_head_attribution(
    sae: SAE,
    n_heads: int,
    features: Sequence[int] | torch.Tensor | None = None,
    side: Literal["decoder", "encoder"] = "decoder",
) -> torch.Tensor:
    """Head attribution of an SAE's features: `[n_features, n_heads]` (all features if None).

    Dense SAEs use `W_dec` / `W_enc`; block-diagonal SAEs (with `W_dec_blocks
    [H, m, d_head]` / `W_enc_blocks [H, d_head, m]`) give one-hot rows read off the blocks.
    """
    if side not in ("decoder", "encoder"):
        raise ValueError(f"side must be 'decoder' or 'encoder', got {side!r}")
    index = resolve_features(sae, features)
    if is_block_diagonal(sae):
        blocks = sae.W_dec_blocks if side == "decoder" else sae.W_enc_blocks.transpose(1, 2)
        if blocks.shape[0] != n_heads:
            raise ValueError(f"this block-diagonal SAE has {blocks.shape[0]} heads, not {n_heads}")
        per_head = blocks.shape[1]
        head, local = index // per_head, index % per_head
        alive = blocks[head, local].norm(dim=-1) > 0
        out = torch.zeros(len(index), n_heads, dtype=blocks.dtype, device=blocks.device)
        out[torch.arange(len(index), device=out.device), head] = alive.to(out.dtype)
        return out
    if side == "decoder":
        return decoder_head_attribution(sae.W_dec[index], n_heads)
    return encoder_head_attribution(sae.W_enc[:, index], n_heads)
