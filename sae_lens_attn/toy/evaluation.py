"""Score a trained SAE against a multi-head toy ground truth.

SAELens's `eval_sae_on_synthetic_data` gives L0, dead latents, explained variance and
MCC; we add MMCS overall, per head and per feature kind, and the mask of live latents
(needed to compare dictionaries without their dead rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.synthetic import DeadLatentsCalculator, eval_sae_on_synthetic_data

from sae_lens_attn.toy.ground_truth import MultiHeadToy
from sae_lens_attn.toy.metrics import max_cosine_per_feature, split_cosine_per_feature


@dataclass
class ToyEvaluation:
    """How well one SAE recovers a toy's features. MMCS values over an empty group
    (say, multi-head features when there are none) are NaN.

    Attributes:
        mmcs: over all true features.
        mmcs_single_head, mmcs_multi_head: over single-head / multi-head true features.
        split_mmcs_multi_head: mean `split_cosine_per_feature` over multi-head features
            (best one-latent-per-head combination); for a block-diagonal SAE this is the
            most it can reach, while its `mmcs_multi_head` is capped at `1/sqrt(k)`.
        mmcs_per_head: `[n_heads]` MMCS over the single-head features of each head.
        dead_share: share of latents that never fired on the evaluation samples.
        sae_l0, true_l0, explained_variance, mcc: from SAELens's
            `eval_sae_on_synthetic_data`.
        alive: `[d_sae]` bool, latents that fired at least once.
    """

    mmcs: float
    mmcs_single_head: float
    mmcs_multi_head: float
    split_mmcs_multi_head: float
    mmcs_per_head: list[float]
    dead_share: float
    sae_l0: float
    true_l0: float
    explained_variance: float
    mcc: float
    alive: torch.Tensor = field(repr=False)

    def to_row(self) -> dict[str, Any]:
        """Flat scalars for a CSV row (`mmcs_head_<h>` per head, no `alive` mask)."""
        row = {
            key: value
            for key, value in vars(self).items()
            if key not in ("alive", "mmcs_per_head")
        }
        row["n_alive"] = int(self.alive.sum())
        row.update({f"mmcs_head_{h}": value for h, value in enumerate(self.mmcs_per_head)})
        return row


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else math.nan


@torch.no_grad()
def alive_latents(
    sae: SAE[Any], toy: MultiHeadToy, n_samples: int, batch_size: int = 4096
) -> torch.Tensor:
    """`[d_sae]` bool: latents that fire on at least one of `n_samples` toy samples."""
    calculator = DeadLatentsCalculator(sae.cfg.d_sae)
    for start in range(0, n_samples, batch_size):
        x, _ = toy.sample(min(batch_size, n_samples - start))
        calculator.add_batch(sae.encode(x))
    return calculator.latent_ever_fired.clone()


@torch.no_grad()
def evaluate_on_toy(
    sae: SAE[Any],
    toy: MultiHeadToy,
    n_samples: int = 20_000,
    batch_size: int = 4096,
    seed: int = 0,
) -> ToyEvaluation:
    """Score `sae` (any SAELens SAE on `[batch, n_heads * d_head]`) against `toy`.

    Both SAELens's evaluation and our live-latent pass draw the same `n_samples`
    samples (same seed), so `dead_share` agrees with SAELens's dead-latent count.
    """
    sae.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        result = eval_sae_on_synthetic_data(
            sae,
            toy.synthetic_model.feature_dict,
            toy.synthetic_model.activation_generator,
            num_samples=n_samples,
            batch_size=batch_size,
        )
        torch.manual_seed(seed)
        alive = alive_latents(sae, toy, n_samples, batch_size)
    decoder = sae.W_dec.detach()
    best = max_cosine_per_feature(toy.features, decoder)
    split = split_cosine_per_feature(toy.features, decoder, toy.cfg.n_heads)
    single, home = toy.is_single_head, toy.home_head
    return ToyEvaluation(
        mmcs=_mean(best),
        mmcs_single_head=_mean(best[single]),
        mmcs_multi_head=_mean(best[~single]),
        split_mmcs_multi_head=_mean(split[~single]),
        mmcs_per_head=[_mean(best[home == h]) for h in range(toy.cfg.n_heads)],
        dead_share=result.dead_latents / sae.cfg.d_sae,
        sae_l0=result.sae_l0,
        true_l0=result.true_l0,
        explained_variance=result.explained_variance,
        mcc=result.mcc,
        alive=alive,
    )
