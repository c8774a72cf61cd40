"""`column_counts`: how many rows of a `[rows, columns]` tensor are non-zero in each column.

Counting firings per feature is everywhere here: the trainer's dead-feature statistics,
held-out firing counts, the detectors' masks. torch's column sum of a bool tensor (or of
its bytes) is slow on CPUs, and `bool().float()` makes a float copy of the whole tensor.
This sums the `!= 0` bytes read as int64 words, eight columns per word, over at most 255
rows at a time: no byte can carry into the next, so every byte of the sum is one column's
count (whatever the byte order). Exact; at `[4096, 24576]` on a 2-core AVX2 CPU 27 ms,
against 136 ms for `bool()` and torch's byte column sum (docs/performance.md).
"""

from __future__ import annotations

import torch

LANES = 8  # bytes per int64 word
MAX_LANE_ROWS = 255  # rows whose 0/1 bytes sum without carrying out of a byte


def column_counts(values: torch.Tensor) -> torch.Tensor:
    """`values [rows, columns]` (any dtype; bool counts its True) -> `[columns]` int32: how
    many rows are non-zero in each column, as `values.bool()` sees them (NaN counts, -0.0
    does not). 255 rows at a time, so the bool copy stays small."""
    if values.dim() != 2:
        raise ValueError(f"expected values [rows, columns], got {list(values.shape)}")
    columns = values.shape[1]
    counts = torch.zeros(columns, dtype=torch.int32, device=values.device)
    for rows in values.split(MAX_LANE_ROWS):
        fired = rows.bool().view(torch.uint8)
        if columns % LANES or not fired.is_contiguous() or fired.storage_offset() % LANES:
            counts += fired.sum(0, dtype=torch.int32)  # no whole words in each row
        else:
            counts += fired.view(torch.int64).sum(0).view(torch.uint8).to(torch.int32)
    return counts
