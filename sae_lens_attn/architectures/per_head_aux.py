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

from collections.abc import Callable

import torch

from sae_lens_attn.architectures.per_head_topk import PerHeadTopKCode, per_head_topk_decode


def per_head_topk_aux_loss(
    hidden_pre: torch.Tensor,
    dead: torch.Tensor,
    residual: torch.Tensor,
    W_dec_blocks: torch.Tensor,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The per-head AuxK loss (without `aux_loss_coefficient`), a scalar.

    Args:
        hidden_pre: `[..., H * m]` pre-activations (the gradient flows into them).
        dead: `[H * m]` bool, the features counted as dead.
        residual: `[..., H * d_head]` detached residual of the live features.
        W_dec_blocks: `[H, m, d_head]` decoder blocks (the gradient flows into them).
        gather: `indices [..., H, j]` -> the pre-activations there, with their gradient
            (`per_head_topk.gather_pre`: through those entries alone); default
            `hidden_pre`'s own gather, whose backward is a dense `[batch, d_sae]` one.
    """
    n_heads, per_head, d_head = W_dec_blocks.shape
    k_aux = max(d_head // 2, 1)
    dead_blocks = dead.view(n_heads, per_head)
    n_dead = dead_blocks.sum(-1)  # [H]
    k = min(k_aux, int(n_dead.max()))
    pre = hidden_pre.unflatten(-1, (n_heads, per_head))
    candidates = torch.where(dead_blocks, pre.detach(), -torch.inf)
    indices = candidates.topk(k, dim=-1, sorted=True).indices  # [..., H, k]
    # a head with fewer than k dead features takes only its n_dead_h first (all dead)
    taken = torch.arange(k, device=pre.device) < n_dead.clamp(max=k_aux).unsqueeze(-1)  # [H, k]
    values = (pre.gather(-1, indices) if gather is None else gather(indices)) * taken
    recons = per_head_topk_decode(PerHeadTopKCode(values, indices), W_dec_blocks)
    error = (recons - residual).pow(2).unflatten(-1, (n_heads, d_head)).sum(-1)  # [..., H]
    scale = (n_dead / k_aux).clamp(max=1.0).to(error.dtype)  # [H]; 0 without dead features
    return (error.reshape(-1, n_heads).mean(0) * scale).sum()
