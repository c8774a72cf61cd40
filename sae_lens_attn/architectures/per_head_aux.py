"""Per-head TopK auxiliary loss (AuxK) for dead features of a block-diagonal SAE.

SAELens's TopK auxiliary loss (`TopKTrainingSAE.calculate_topk_aux_loss`, after Gao et
al., appendix B.1) lets the top `k_aux = d_in // 2` dead pre-activations of the whole SAE
reconstruct the residual `x - x_hat` of the live ones, scaled by `min(n_dead / k_aux, 1)`.
In a block-diagonal SAE a head's features can only reconstruct that head's slice, so the
loss is taken per head: head h's top `k_aux = d_head // 2` dead pre-activations (of its
own block) reconstruct its residual slice `[..., h*d_head:(h+1)*d_head]`, scaled by
`min(n_dead_h / k_aux, 1)`, and the heads' losses are summed (SAELens's squared error is
a sum over `d_in`, so with one head this is exactly SAELens's loss). A head without dead
features adds nothing.
"""

from __future__ import annotations

import torch

from sae_lens_attn.architectures.per_head_topk import PerHeadTopKCode, per_head_topk_decode


def aux_k(dead: torch.Tensor, n_heads: int, d_head: int) -> int:
    """How many dead pre-activations a head the loss takes: `min(d_head // 2, the most
    dead features any head has)` (`dead [H * m]` bool, with at least one True)."""
    return min(max(d_head // 2, 1), int(dead.view(n_heads, -1).sum(-1).max()))


def per_head_topk_aux_loss(
    hidden_pre: torch.Tensor,
    dead: torch.Tensor,
    residual: torch.Tensor,
    W_dec_blocks: torch.Tensor,
) -> torch.Tensor:
    """The per-head AuxK loss (without `aux_loss_coefficient`), a scalar, from the dense
    `hidden_pre [..., H * m]` (the gradient flows into it); the other arguments as
    `dead_pre_aux_loss`."""
    n_heads, _, d_head = W_dec_blocks.shape
    pre = hidden_pre.unflatten(-1, (n_heads, -1))
    candidates = torch.where(dead.view(n_heads, -1), pre.detach(), -torch.inf)
    indices = candidates.topk(aux_k(dead, n_heads, d_head), dim=-1, sorted=True).indices
    return dead_pre_aux_loss(pre.gather(-1, indices), indices, dead, residual, W_dec_blocks)


def dead_pre_aux_loss(
    values: torch.Tensor,
    indices: torch.Tensor,
    dead: torch.Tensor,
    residual: torch.Tensor,
    W_dec_blocks: torch.Tensor,
) -> torch.Tensor:
    """The per-head AuxK loss (without `aux_loss_coefficient`), a scalar.

    Args:
        values: `[..., H, aux_k]` each head's top dead pre-activations, sorted
            descending (entries past a head's dead count are ignored, -inf allowed).
        indices: `[..., H, aux_k]` their feature indices inside the head's block.
        dead: `[H * m]` bool, the features counted as dead.
        residual: `[..., H * d_head]` detached residual of the live features.
        W_dec_blocks: `[H, m, d_head]` decoder blocks (the gradient flows into them).
    """
    n_heads, per_head, d_head = W_dec_blocks.shape
    k_aux = max(d_head // 2, 1)
    n_dead = dead.view(n_heads, per_head).sum(-1)  # [H]
    # a head with fewer than aux_k dead features takes only its n_dead_h first (all dead)
    taken = torch.arange(values.shape[-1], device=values.device) < n_dead.unsqueeze(-1)  # [H, k]
    values = torch.where(taken, values, 0.0)
    recons = per_head_topk_decode(PerHeadTopKCode(values, indices), W_dec_blocks)
    error = (recons - residual).pow(2).unflatten(-1, (n_heads, d_head)).sum(-1)  # [..., H]
    scale = (n_dead / k_aux).clamp(max=1.0).to(error.dtype)  # [H]; 0 without dead features
    return (error.reshape(-1, n_heads).mean(0) * scale).sum()
