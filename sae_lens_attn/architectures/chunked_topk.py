"""Per-head TopK of block-diagonal pre-activations, a chunk of rows at a time.

The pre-activations of a block-diagonal encoder are `pre[b, h] = x[b, h] @ W[h] + b_enc[h]`,
`[batch, H * m]` in all: 400 MB in fp32 at gpt2-small's shape (batch 4096, 12 heads,
2048 features a head). TopK needs each row's values only long enough to pick its k
largest per head, so `chunked_block_topk` computes them for `chunk_rows` rows at a time
(one `baddbmm` into a reused `[H, chunk_rows, m]` buffer), takes the top k of each head
there, and writes the values and indices into preallocated `[H, batch, k]` outputs: the
whole `[batch, H * m]` tensor never exists, and the buffer stays warm in the caches
instead of faulting in a fresh 400 MB block every step.

Optionally it also takes, in the same chunk, the top `k_dead` pre-activations among the
features a mask marks (dead features, for the TopK auxiliary loss): their columns of the
buffer are gathered (padded to the largest head's count, padding at -inf) and a second,
sorted TopK runs on them, so the cost follows the number of dead features.

Forward only and without autograd: `per_head_topk.py` attaches the sparse gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# A chunk's `[H, chunk_rows, m]` buffer is sized to about this many bytes: 512 rows at
# gpt2-small's shape (12 heads x 2048 features, fp32). Chunks of 64 to 4096 rows were
# measured there on a loaded 2-core AVX2 EPYC (docs/performance.md): with one thread
# 256-1024 rows ran 20-30% faster than the dense path; with two, chunks under 256 rows
# lost to it (each chunk's parallel ops wait for both threads).
CHUNK_BYTES = 48 * 2**20


class BlockTopK(NamedTuple):
    """`values`, `indices` `[..., H, k]` (pre-activations and their feature index inside
    the head's block), and the same for the masked features (`dead_values`,
    `dead_indices` `[..., H, k_dead]`, sorted descending) or None."""

    values: torch.Tensor
    indices: torch.Tensor
    dead_values: torch.Tensor | None
    dead_indices: torch.Tensor | None


def rows_per_chunk(n_features: int, element_size: int) -> int:
    """Rows of `n_features` elements of `element_size` bytes that fit in `CHUNK_BYTES`
    (at least 1)."""
    return max(CHUNK_BYTES // (n_features * element_size), 1)


@torch.no_grad()
def chunked_block_topk(
    sae_in: torch.Tensor,
    W_enc_blocks: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    dead: torch.Tensor | None = None,
    k_dead: int = 0,
    chunk_rows: int | None = None,
) -> BlockTopK:
    """Top `k` of each head's block of `sae_in @ blockdiag(W_enc_blocks) + b_enc`.

    Args:
        sae_in: `[..., H * d_head]`, flattened to `N` rows.
        W_enc_blocks: `[H, d_head, m]`; `b_enc`: `[H * m]`; all of one dtype.
        k: features kept per head (unsorted, as `torch.topk(sorted=False)`).
        dead: `[H * m]` bool, or None; with it, also the top `k_dead` (sorted) of each
            head's block among the features it marks (-inf where a head has fewer).
        chunk_rows: rows a chunk (default: `CHUNK_BYTES` of pre-activations).
    """
    n_heads, d_head, per_head = W_enc_blocks.shape
    rows = sae_in.reshape(-1, n_heads, d_head).transpose(0, 1)  # [H, N, d_head], a view
    n_rows = rows.shape[1]
    bias = b_enc.view(n_heads, 1, per_head)
    columns = None if dead is None else _DeadColumns.of(dead.view(n_heads, per_head))
    dead_values = dead_positions = None
    if torch.compiler.is_compiling():  # Dynamo refuses out= into views: one chunk
        pre = torch.baddbmm(bias, rows, W_enc_blocks)
        values, indices = pre.topk(k, dim=-1, sorted=False)
        if columns is not None:
            dead_values, dead_positions = columns.top(pre, k_dead)
        return _batch_major(
            sae_in.shape[:-1], values, indices, dead_values, columns, dead_positions
        )
    if chunk_rows is None:
        chunk_rows = rows_per_chunk(n_heads * per_head, rows.element_size())
    chunk_rows = min(chunk_rows, n_rows)
    values = rows.new_empty(n_heads, n_rows, k)
    indices = torch.empty(n_heads, n_rows, k, dtype=torch.long, device=rows.device)
    buffer = rows.new_empty(n_heads, chunk_rows, per_head)
    if columns is not None:
        dead_values = rows.new_empty(n_heads, n_rows, k_dead)
        dead_positions = torch.empty(n_heads, n_rows, k_dead, dtype=torch.long, device=rows.device)
        dead_buffer = rows.new_empty(n_heads, chunk_rows, columns.index.shape[-1])
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        pre = buffer[:, : stop - start]
        torch.baddbmm(bias, rows[:, start:stop], W_enc_blocks, out=pre)
        torch.topk(
            pre, k, dim=-1, sorted=False, out=(values[:, start:stop], indices[:, start:stop])
        )
        if columns is not None:
            out = (dead_values[:, start:stop], dead_positions[:, start:stop])  # type: ignore[index]
            columns.top(pre, k_dead, dead_buffer[:, : stop - start], out)
    return _batch_major(sae_in.shape[:-1], values, indices, dead_values, columns, dead_positions)


class _DeadColumns(NamedTuple):
    """Head h's dead features as `index [H, n]` (its dead features first, then padding
    up to the largest head's count `n`) and `padding [H, 1, n]` (True on the padding)."""

    index: torch.Tensor
    padding: torch.Tensor

    @classmethod
    def of(cls, dead_blocks: torch.Tensor) -> _DeadColumns:
        n_dead = dead_blocks.sum(-1)  # [H]
        width = int(n_dead.max())
        index = torch.sort((~dead_blocks).to(torch.uint8), dim=-1, stable=True).indices[:, :width]
        padding = torch.arange(width, device=index.device) >= n_dead.unsqueeze(-1)
        return cls(index, padding.unsqueeze(1))

    def top(
        self,
        pre: torch.Tensor,
        k: int,
        buffer: torch.Tensor | None = None,
        out: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The top `k` (sorted) of `pre [H, n, m]` among the dead columns: values and
        positions in `index` (-inf where a head has fewer than `k` dead features); into
        `buffer [H, n, width]` and `out` when given."""
        index = self.index.unsqueeze(1).expand(-1, pre.shape[1], -1)
        dead_pre = (
            torch.gather(pre, -1, index)
            if buffer is None
            else torch.gather(pre, -1, index, out=buffer)
        )
        dead_pre.masked_fill_(self.padding, -torch.inf)
        if out is None:
            top = dead_pre.topk(k, dim=-1)
            return top.values, top.indices
        torch.topk(dead_pre, k, dim=-1, out=out)
        return out

    def features(self, positions: torch.Tensor) -> torch.Tensor:
        """`positions [H, N, j]` in `index` -> feature indices inside the head's block."""
        return self.index.unsqueeze(1).expand(-1, positions.shape[1], -1).gather(-1, positions)


def _batch_major(
    lead: torch.Size,
    values: torch.Tensor,
    indices: torch.Tensor,
    dead_values: torch.Tensor | None,
    columns: _DeadColumns | None,
    dead_positions: torch.Tensor | None,
) -> BlockTopK:
    """The `[H, N, j]` results as contiguous `[*lead, H, j]` (`N` = prod(lead)), dead
    positions turned into feature indices."""
    dead_indices = None
    if columns is not None and dead_positions is not None:
        dead_indices = columns.features(dead_positions)
    tensors = (values, indices, dead_values, dead_indices)
    return BlockTopK(
        *(None if t is None else t.transpose(0, 1).reshape(*lead, *t.shape[::2]) for t in tensors)
    )
