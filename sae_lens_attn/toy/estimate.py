"""Estimate the number of ground-truth features from a dictionary-size sweep.

Sharkey, Braun and Millidge (2022) proposed two signals; these are our exact rules.

- **Dead latents.** Once a dictionary has more latents than there are features, the
  surplus should die. Estimate: the number of *live* latents (fired at least once on
  the evaluation samples) of the largest dictionary. If that dictionary has fewer than
  `min_dead_share` dead latents it was not saturated, and the estimate is only a lower
  bound.
- **MMCS between dictionaries.** A dictionary at least as large as the number of
  features already holds every feature, so it reproduces the live rows of the next
  larger dictionary (`mmcs(D_next, D) >= threshold`); a smaller one misses features
  the larger one found. Estimate: the smallest size whose dictionary reproduces the
  next larger one. If none does, the number of features is larger than the
  second-largest size, reported as a lower bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEAD_LATENTS = "dead latents"
DICTIONARY_MMCS = "MMCS between dictionaries"


@dataclass(frozen=True)
class SizeEstimate:
    """`relation value` features by `method`: "=" for an estimate, ">=" or ">" when the
    sweep only gives a lower bound."""

    method: str
    value: int
    relation: str = "="

    @property
    def lower_bound(self) -> bool:
        return self.relation != "="

    def __str__(self) -> str:
        return f"{self.relation} {self.value}" if self.lower_bound else str(self.value)


def estimate_from_dead_latents(
    sizes: Sequence[int], n_alive: Sequence[int], min_dead_share: float = 0.05
) -> SizeEstimate:
    """Live latents of the largest dictionary (see the module docstring).

    sizes: dictionary sizes; n_alive: live latents of each (same order).
    """
    if len(sizes) != len(n_alive) or not sizes:
        raise ValueError(f"need one live count per size, got {len(sizes)} sizes, {len(n_alive)} counts")
    largest = max(range(len(sizes)), key=lambda i: sizes[i])
    dead_share = 1.0 - n_alive[largest] / sizes[largest]
    return SizeEstimate(
        DEAD_LATENTS, int(n_alive[largest]), ">=" if dead_share < min_dead_share else "="
    )


def estimate_from_dictionary_mmcs(
    sizes: Sequence[int], matrix: torch.Tensor, threshold: float = 0.9
) -> SizeEstimate:
    """Smallest size that reproduces the next larger dictionary (module docstring).

    sizes: increasing dictionary sizes; matrix: `[n, n]` with `matrix[i, j] =
    mmcs(D_i, D_j)` (`SweepResult.dictionary_mmcs`).
    """
    if list(sizes) != sorted(sizes) or len(set(sizes)) != len(sizes):
        raise ValueError(f"sizes must be strictly increasing, got {list(sizes)}")
    if len(sizes) < 2:
        raise ValueError("comparing dictionaries needs at least two sizes")
    if matrix.shape != (len(sizes), len(sizes)):
        raise ValueError(f"matrix must be [{len(sizes)}, {len(sizes)}], got {list(matrix.shape)}")
    for i in range(len(sizes) - 1):
        if matrix[i + 1, i] >= threshold:
            return SizeEstimate(DICTIONARY_MMCS, int(sizes[i]))
    return SizeEstimate(DICTIONARY_MMCS, int(sizes[-2]), ">")
