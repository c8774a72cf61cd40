"""Lifting silent features of a per-head TopK SAE to the edge of firing while training
(`train`'s default for them).

After every training step, each feature that did not fire on the step's batch has its
`b_enc` raised by the least amount that would have made it win a TopK slot in its head on
one token of that batch (plus `MARGIN` of the head's mean firing threshold):

    lift_f = max(0, min_t (threshold_h(t) - pre_f(t))) + MARGIN * mean_t threshold_h(t)

where `pre_f(t)` is the feature's pre-activation on token t (current weights) and
`threshold_h(t)` the smallest activation that fired in head h on token t in the step (0
where fewer than k fired: any positive pre-activation wins there). A feature that keeps
losing every slot so sits at the edge of firing, where one token's gradient can take over;
a feature is untouched on every batch it fires in. The lift has no scale to choose: it is
measured in the head's own pre-activations. It is pressure towards a minimum firing rate
of about once per batch, in the spirit of the bias-only load balancing of DeepSeek-V3's
expert routing (Wang et al. 2024, "Auxiliary-loss-free load balancing strategy for
mixture-of-experts"), but on the SAE's own `b_enc`, so the saved SAE encodes exactly as it
was trained.

Why: at expansion 32 the live features of a per-head TopK SAE outgrow the rest within tens
of steps at `train`'s learning rate, and dead-feature resampling alone left 4% of them
dead. Only per-head TopK SAEs are lifted: where a threshold decides L0 (ReLU, JumpReLU,
BatchTopK's inference threshold) a higher `b_enc` raises L0, and on SAELens's dense TopK
a lift cost CE loss recovered at low k. The measurements are in docs/initialisation.md.
"""

from __future__ import annotations

import torch
from torch import nn

MARGIN = 0.01  # of the head's mean firing threshold: the lifted feature wins, not ties


def lift_unsupported_reason(sae: nn.Module) -> str | None:
    """Why `sae` is not lifted (None: it is): only per-head TopK SAEs (block-diagonal with
    activation "topk") are."""
    if hasattr(sae, "W_enc_blocks") and getattr(sae.cfg, "activation", None) == "topk":
        return None
    return (f"{type(sae).__name__} is not a per-head TopK SAE (block_diagonal with activation topk), "
            "the only kind it is measured to help")


def firing_thresholds(feature_acts: torch.Tensor, n_heads: int, k: int) -> torch.Tensor:
    """`[batch, n_heads]`: the smallest activation that fired in each head on each token of
    `feature_acts [batch, d_sae]` (dense or sparse COO), 0 where fewer than `k` fired."""
    batch, d_sae = feature_acts.shape
    if feature_acts.is_sparse:  # entries as built, no coalescing sort: the SAEs here write each once
        # a stored zero (ReLU after the selection) counts towards k and sets the minimum to
        # 0, as it should: then fewer than k fired
        (tokens, features), values = feature_acts._indices(), feature_acts._values()
    else:
        tokens, features = feature_acts.nonzero(as_tuple=True)
        values = feature_acts[tokens, features]
    cells = tokens * n_heads + features // (d_sae // n_heads)
    smallest = torch.full((batch * n_heads,), float("inf"), dtype=values.dtype, device=values.device)
    smallest.scatter_reduce_(0, cells, values, reduce="amin")
    counts = torch.zeros(batch * n_heads, dtype=torch.long, device=values.device).index_add_(
        0, cells, torch.ones_like(cells)
    )
    return torch.where(counts >= k, smallest, torch.zeros_like(smallest)).view(batch, n_heads)


@torch.no_grad()
def lift_silent_biases(
    sae: nn.Module, silent: torch.Tensor, sae_in: torch.Tensor, feature_acts: torch.Tensor
) -> int:
    """Raise `b_enc` of the `silent [d_sae]` features of the per-head TopK `sae` to the edge
    of firing on `sae_in [batch, d_in]` (the trainer's scaled batch), in place, given the
    step's `feature_acts [batch, d_sae]` on it. Returns how many features were lifted."""
    n_heads, d_head, per_head = sae.W_enc_blocks.shape
    silent_by_head = silent.view(n_heads, per_head)
    counts = silent_by_head.sum(-1)  # [H]
    n_max = int(counts.max())
    if n_max == 0:
        return 0
    thresholds = firing_thresholds(feature_acts.detach(), n_heads, sae.cfg.k).T  # [H, batch]
    # each head's silent features first (a stable sort), padded to the head with most
    rows = silent_by_head.to(torch.int8).sort(dim=-1, descending=True, stable=True).indices[:, :n_max]  # [H, n]
    columns = sae.W_enc_blocks.detach().gather(2, rows.unsqueeze(1).expand(-1, d_head, -1))  # [H, d_head, n]
    biases = sae.b_enc.data.view(n_heads, per_head)
    centred = (sae_in - sae.b_dec.detach()).view(-1, n_heads, d_head).transpose(0, 1)  # [H, batch, d_head]
    pre = torch.bmm(centred, columns).add_(biases.gather(1, rows).unsqueeze(1))  # [H, batch, n]
    gap = pre.neg_().add_(thresholds.unsqueeze(-1)).amin(dim=1).clamp_(min=0)  # [H, n]
    lift = gap + MARGIN * thresholds.mean(dim=1, keepdim=True)
    real = torch.arange(n_max, device=counts.device) < counts.unsqueeze(1)  # [H, n]: not padding
    biases.scatter_add_(1, rows, lift * real)
    return int(counts.sum())
