"""Logit lens on hook_z SAE features (Bloom, 2024): pure tensor math, no I/O.

A feature's output direction in the residual stream is `u_j = sum_h W_dec[j, h-slice] @
W_O[h]` and its logit weights are `u_j @ W_U` (optionally through the final LayerNorm:
`unembed_through_final_ln`). Their statistics over the vocabulary follow SAELens's tutorial `tsea.py`: mean,
population std, skewness `E[z^3]` and non-excess kurtosis `E[z^4]` of the standardised
weights, i.e. `scipy.stats.skew(w)` and `scipy.stats.kurtosis(w, fisher=False)`.

Everything over the vocabulary runs in chunks of features, so `[d_sae, d_vocab]` (24576 x
50257 for gpt2-small, ~5 GB in float32) is never held at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.sources.head_layout import HeadLayout

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "LogitStats",
    "dead_rows",
    "feature_output_directions",
    "iter_logit_weights",
    "logit_weight_stats",
    "moments",
    "sae_output_directions",
    "top_logit_tokens",
    "unembed_through_final_ln",
]

#: Features per chunk: 256 x 50257 float32 logit weights are ~51 MB.
DEFAULT_CHUNK_SIZE = 256


@dataclass(frozen=True)
class LogitStats:
    """Per-feature statistics of the logit weights, each `[n]` (float32).

    `std` is the population std; `skewness` and `kurtosis` are the third and fourth
    standardised moments (kurtosis non-excess: 3 for a normal distribution). A feature
    whose weights are all equal (up to float rounding, by scipy's own test) has NaN
    skewness and kurtosis, as in scipy.
    """

    mean: torch.Tensor
    std: torch.Tensor
    skewness: torch.Tensor
    kurtosis: torch.Tensor

    def __len__(self) -> int:
        return self.mean.shape[0]

    def cpu(self) -> LogitStats:
        return LogitStats(self.mean.cpu(), self.std.cpu(), self.skewness.cpu(), self.kurtosis.cpu())

    @classmethod
    def concat(cls, parts: list[LogitStats]) -> LogitStats:
        return cls(
            mean=torch.cat([p.mean for p in parts]),
            std=torch.cat([p.std for p in parts]),
            skewness=torch.cat([p.skewness for p in parts]),
            kurtosis=torch.cat([p.kurtosis for p in parts]),
        )


def dead_rows(rows: torch.Tensor) -> torch.Tensor:
    """`[n, d]` decoder rows or output directions -> `[n]` bool: True where a row is all
    zeros or holds a NaN/inf. Such a feature writes nothing usable: every detector counts
    it as dead, and dashboards skip it."""
    rows = rows.detach()
    return ~torch.isfinite(rows).all(dim=1) | (rows.abs().amax(dim=1) == 0)


def feature_output_directions(W_dec: torch.Tensor, W_O: torch.Tensor) -> torch.Tensor:
    """Residual-stream direction written by each feature.

    `W_dec [d_sae, n_heads * d_head]` (head-major), `W_O [n_heads, d_head, d_model]`
    (already restricted to the layout's heads, in layout order) -> `[d_sae, d_model]`.
    """
    if W_O.ndim != 3:
        raise ValueError(f"expected W_O [n_heads, d_head, d_model], got shape {list(W_O.shape)}")
    n_heads, d_head, _ = W_O.shape
    if W_dec.ndim != 2 or W_dec.shape[1] != n_heads * d_head:
        raise ValueError(
            f"W_dec {list(W_dec.shape)} does not match W_O {list(W_O.shape)}: expected "
            f"[d_sae, {n_heads * d_head}] (n_heads * d_head)"
        )
    return W_dec @ W_O.reshape(n_heads * d_head, -1).to(W_dec.dtype)


def sae_output_directions(
    sae: SAE, model: HookedTransformer, layout: HeadLayout | None = None
) -> torch.Tensor:
    """`feature_output_directions` of a hook_z SAE in `model`: `[d_sae, d_model]`.

    Uses the SAE's dense `W_dec` (block-diagonal SAEs expose one) and `W_O` of the
    layout's layer restricted to the layout's heads.
    """
    from sae_lens_attn.sources.head_layout import HeadLayout

    layout = layout or HeadLayout.from_sae(sae, model)
    W_O = model.W_O[layout.layer][list(layout.heads)]
    with torch.no_grad():
        return feature_output_directions(sae.W_dec.detach(), W_O.detach())


def unembed_through_final_ln(model: HookedTransformer) -> torch.Tensor:
    """`W_U [d_model, d_vocab]` with the final LayerNorm's linear part folded in.

    Equal to what TransformerLens's `fold_ln` makes of `W_U`: the final norm's weight
    scales each residual dimension and, for LayerNorm (not RMSNorm), the result is centred
    over `d_model` (LayerNorm's mean subtraction). The 1/std factor is one positive number
    per position and leaves the shape of the logit weights unchanged, so it is left out.
    Models loaded from the hub with `fold_ln=True` have this folded already and get their
    `W_U` back unchanged.
    """
    W_U = model.W_U.detach()
    weight = getattr(getattr(model, "ln_final", None), "w", None)
    if weight is None:
        return W_U
    folded = W_U * weight.detach()[:, None]
    if model.cfg.normalization_type == "LN":
        folded = folded - folded.mean(dim=0, keepdim=True)
    return folded


def _check_shapes(directions: torch.Tensor, W_U: torch.Tensor) -> None:
    if directions.ndim != 2 or W_U.ndim != 2 or directions.shape[1] != W_U.shape[0]:
        raise ValueError(
            f"expected directions [n, d_model] and W_U [d_model, d_vocab] with the same "
            f"d_model, got {list(directions.shape)} and {list(W_U.shape)}"
        )


def iter_logit_weights(
    directions: torch.Tensor, W_U: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield `(start, directions[start:start+c] @ W_U)` chunk by chunk.

    `directions [n, d_model]`, `W_U [d_model, d_vocab]` -> chunks `[c, d_vocab]`
    (float32, on W_U's device, `c <= chunk_size`).
    """
    _check_shapes(directions, W_U)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    W_U = W_U.detach().float()
    directions = directions.detach()
    with torch.no_grad():
        for start in range(0, directions.shape[0], chunk_size):
            chunk = directions[start : start + chunk_size].float().to(W_U.device)
            yield start, chunk @ W_U


def moments(weights: torch.Tensor) -> LogitStats:
    """Statistics of each row of `weights [n, d_vocab]` (see `LogitStats`)."""
    weights = weights.float()
    mean = weights.mean(dim=1)
    centred = weights - mean[:, None]
    squared = centred.square()
    m2 = squared.mean(dim=1)
    m3 = (squared * centred).mean(dim=1)
    m4 = squared.square().mean(dim=1)
    # (nearly) constant rows: NaN shape statistics, with scipy's test for "constant"
    constant = m2 <= (torch.finfo(m2.dtype).resolution * 10 * mean).square()
    nan = torch.full_like(m2, float("nan"))
    skewness = torch.where(constant, nan, m3 / m2**1.5)
    kurtosis = torch.where(constant, nan, m4 / m2.square())
    return LogitStats(mean=mean, std=m2.sqrt(), skewness=skewness, kurtosis=kurtosis)


def logit_weight_stats(
    directions: torch.Tensor,
    W_U: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> LogitStats:
    """Mean, std, skewness and kurtosis of `directions @ W_U` over the vocabulary.

    `directions [n, d_model]`, `W_U [d_model, d_vocab]` -> `LogitStats` of `[n]` tensors.
    """
    parts = [moments(w).cpu() for _, w in iter_logit_weights(directions, W_U, chunk_size)]
    if not parts:
        return LogitStats(*(torch.empty(0) for _ in range(4)))
    return LogitStats.concat(parts)


def top_logit_tokens(
    directions: torch.Tensor,
    W_U: torch.Tensor,
    k: int,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `k` most promoted and most suppressed tokens of each direction.

    Returns `(top_values, top_indices, bottom_values, bottom_indices)`, each `[n, k]`;
    top values descending, bottom values ascending (most negative first).
    """
    if not 1 <= k <= W_U.shape[-1]:
        raise ValueError(f"k must be in 1..d_vocab={W_U.shape[-1]}, got {k}")
    parts = []
    for _, weights in iter_logit_weights(directions, W_U, chunk_size):
        top = weights.topk(k, dim=1)
        bottom = weights.topk(k, dim=1, largest=False)
        parts.append((top.values, top.indices, bottom.values, bottom.indices))
    if not parts:
        empty = torch.empty(0, k)
        return empty, empty.long(), empty, empty.long()
    return tuple(torch.cat([p[i] for p in parts]).cpu() for i in range(4))  # type: ignore[return-value]
