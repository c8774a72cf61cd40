"""`token_firing_counts`: the per-feature firing counts SAELens's trainer keeps, cheaply.

SAELens's `SAETrainer._train_step` counts firings with
`firing = feature_acts.bool().float()`, then `firing.sum(-2)` (did it fire) and
`firing.sum(0)` (on how many tokens). On a dense `[tokens, d_sae]` batch that makes a
float copy of the whole batch and reads it twice (245 ms at gpt2-small's shape, batch
4096, on a 2-core AVX2 CPU); on a sparse COO batch (per-head TopK, SAELens's TopK with
sparse activations) torch's sparse sums sort every entry twice (85 ms there). One count
per feature gives both numbers: about 27 ms dense, 6 ms sparse (docs/performance.md).
"""

from __future__ import annotations

import torch


def token_firing_counts(feature_acts: torch.Tensor) -> torch.Tensor | None:
    """`[d_sae]` float32: on how many tokens of `feature_acts [tokens, d_sae]` each feature
    is non-zero, exactly as SAELens's trainer counts (`feature_acts.bool().float().sum(0)`:
    for a sparse COO tensor every stored non-zero entry counts, duplicates included). None
    for any other number of dimensions or layout, where the trainer's own code must run."""
    if feature_acts.dim() != 2:
        return None
    d_sae = feature_acts.shape[1]
    if feature_acts.layout == torch.sparse_coo:
        features = feature_acts._indices()[1]
        firing = feature_acts._values() != 0
        counts = torch.bincount(features[firing], minlength=d_sae)
    elif feature_acts.layout == torch.strided:
        counts = _column_counts(feature_acts)
    else:
        return None
    return counts.to(torch.float32)


LANES = 8  # bytes per int64 word
MAX_LANE_ROWS = 255  # rows whose 0/1 bytes sum without carrying out of a byte


def _column_counts(acts: torch.Tensor) -> torch.Tensor:
    """`[d_sae]` int32: how many rows of `acts [tokens, d_sae]` are non-zero in each column
    (`bool()`: NaN counts, -0.0 does not). 255 rows at a time, so the bool copy stays small
    (no fresh `[tokens, d_sae]` allocation), and eight columns at a time: each row's bytes
    read as int64 words are summed over those rows, where no byte can carry into the next,
    so every byte of the sum is one column's count (whatever the byte order). Exact, and
    5x faster than `bool()` and torch's byte column sum of the whole batch (136 -> 27 ms at
    [4096, 24576] on a 2-core AVX2 CPU)."""
    columns = acts.shape[1]
    counts = torch.zeros(columns, dtype=torch.int32, device=acts.device)
    for rows in acts.split(MAX_LANE_ROWS):
        fired = rows.bool().view(torch.uint8)
        if columns % LANES:
            counts += fired.sum(0, dtype=torch.int32)
        else:
            counts += fired.view(torch.int64).sum(0).view(torch.uint8).to(torch.int32)
    return counts
