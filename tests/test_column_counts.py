"""`column_counts` against torch's own column count, on the layouts it takes shortcuts for."""

from __future__ import annotations

import pytest
import torch

from sae_lens_attn.column_counts import column_counts


def reference(values: torch.Tensor) -> torch.Tensor:
    return (values != 0).sum(dim=0).to(torch.int32)


@pytest.mark.parametrize("columns", [64, 61])  # whole int64 words, and a remainder
def test_counts_equal_torch_over_several_chunks_with_nan_and_negative_zero(columns: int):
    values = torch.randn(600, columns, generator=torch.Generator().manual_seed(0)).relu()
    values[:, 0], values[:, 1] = 1.0, 0.0  # 255 per chunk: a byte at its limit; never
    values[5, 2], values[6, 3] = float("nan"), -0.0
    counts = column_counts(values)
    assert counts.dtype == torch.int32
    assert torch.equal(counts, reference(values))
    assert counts[0] == 600 and counts[1] == 0


def test_bool_views_that_are_not_whole_aligned_rows_are_counted_too():
    mask = torch.rand(300, 40, generator=torch.Generator().manual_seed(1)) < 0.4
    transposed = mask.T[:, :32]  # not contiguous
    unaligned = mask.flatten()[3 : 3 + 300 * 32].view(300, 32)  # contiguous, offset 3 bytes
    for view in (transposed, unaligned, mask.expand(2, -1, -1).reshape(-1, 40)):
        assert torch.equal(column_counts(view), reference(view))


def test_anything_but_rows_by_columns_is_refused():
    with pytest.raises(ValueError, match=r"expected values \[rows, columns\], got \[2, 3, 4\]"):
        column_counts(torch.ones(2, 3, 4))
