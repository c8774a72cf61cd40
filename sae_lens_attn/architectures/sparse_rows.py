"""Row kernels for sparse codes: each of N bags picks some rows of a table `[F, d]`.

A sparse code is a CSR pattern (`crow [N + 1]`, `col [nnz]`: bag n picks table rows
`col[crow[n]:crow[n + 1]]`) with `weights [nnz]`; a k-sparse code is the special case
`indices [N, k]` (`crow = 0, k, 2k, ...`). Decoding it is
`torch.nn.functional.embedding_bag` (a gather-weighted-sum that never materialises the
`[nnz, d]` gathered rows); its two backward products are the ops here:

- `gather_dot(table, indices, rows)`: `out[n, j] = rows[n] @ table[indices[n, j]]`, the
  gradient with respect to the weights (a sampled dense-dense product);
- `scatter_outer(indices, weights, rows, n_table_rows)`: `out[f] = sum over (n, j) with
  indices[n, j] == f of weights[n, j] * rows[n]`, the gradient with respect to the table.

`RowPattern` does the same for a CSR pattern of any number of entries per bag (the ReLU
step's non-zero activations) and keeps its transposed pattern, so two table gradients
of one pattern sort its entries once.

On CPU in float32/float64 both run as sparse CSR products (`torch.sparse.sampled_addmm`
and a CSR @ dense matmul), measured 3-8x faster there than gathering `[N * k, d]` rows and
reducing them; elsewhere (bf16, CUDA) they gather and `index_add_`. The k-sparse ops are
`torch.library` custom ops, so `torch.compile` treats them as opaque calls (Dynamo
cannot trace sparse CSR tensors).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

_CSR_DTYPES = (torch.float32, torch.float64)


def _use_csr(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu" and tensor.dtype in _CSR_DTYPES


def _csr(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we pin it in tests
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def _crow_of_counts(counts: torch.Tensor) -> torch.Tensor:
    crow = counts.new_zeros(counts.numel() + 1)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow


class RowPattern:
    """A CSR pattern: bag n (of `n_bags`) picks table rows `col[crow[n]:crow[n + 1]]`
    (of `n_table_rows`). Built once per code; every product below reuses it."""

    def __init__(self, crow: torch.Tensor, col: torch.Tensor, n_table_rows: int) -> None:
        self.crow, self.col, self.n_table_rows = crow, col, n_table_rows
        self.n_bags = crow.numel() - 1
        self._transposed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def of_bags(
        cls, bag: torch.Tensor, col: torch.Tensor, n_bags: int, n_table_rows: int
    ) -> RowPattern:
        """From the entries' bag indices `bag [nnz]`, sorted ascending (as `nonzero` gives)."""
        return cls(_crow_of_counts(torch.bincount(bag, minlength=n_bags)), col, n_table_rows)

    def bags(self) -> torch.Tensor:
        """`[nnz]` the bag of every entry."""
        counts = self.crow.diff()
        return torch.repeat_interleave(torch.arange(self.n_bags, device=self.crow.device), counts)

    def matmul(self, weights: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """`[n_bags, d]`: `out[n] = sum over the bag's entries e of weights[e] * table[col[e]]`."""
        return F.embedding_bag(
            self.col, table, self.crow[:-1], mode="sum", per_sample_weights=weights
        )

    def gather_dot(self, table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """`[nnz]`: `out[e] = rows[bag of e] @ table[col[e]]` for `table [F, d]`, `rows [n_bags, d]`."""
        if not _use_csr(rows) or self.col.numel() == 0:
            return (table[self.col] * rows[self.bags()]).sum(-1)
        pattern = _csr(
            self.crow, self.col, rows.new_zeros(self.col.numel()), (self.n_bags, self.n_table_rows)
        )
        return torch.sparse.sampled_addmm(pattern, rows.contiguous(), table.t(), beta=0.0).values()

    def scatter_outer(self, weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """`[n_table_rows, d]`: `out[f] = sum over entries e with col[e] == f of
        weights[e] * rows[bag of e]`."""
        if not _use_csr(rows) or self.col.numel() == 0:
            source = weights.unsqueeze(-1) * rows[self.bags()]
            return rows.new_zeros(self.n_table_rows, rows.shape[-1]).index_add_(0, self.col, source)
        crow_t, bag_t, order = self._transpose()
        transposed = _csr(crow_t, bag_t, weights[order], (self.n_table_rows, self.n_bags))
        return transposed @ rows.contiguous()

    def _transpose(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The entries grouped by table row: `(crow [F + 1], bags [nnz], order [nnz])`."""
        if self._transposed is None:
            # int32 keys sort about 1.4x faster than int64 ones on CPU (measured, 3M entries)
            keys = self.col.int() if self.n_table_rows < 2**31 else self.col
            order = keys.argsort()
            crow_t = _crow_of_counts(torch.bincount(self.col, minlength=self.n_table_rows))
            self._transposed = (crow_t, self.bags()[order], order)
        return self._transposed


def _k_sparse_pattern(indices: torch.Tensor, n_table_rows: int) -> RowPattern:
    n_bags, k = indices.shape
    crow = torch.arange(0, n_bags * k + 1, k, device=indices.device)
    return RowPattern(crow, indices.reshape(-1), n_table_rows)


@torch.library.custom_op("sae_lens_attn::gather_dot", mutates_args=())
def gather_dot(table: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`table [F, d]`, `indices [N, k]` (int64), `rows [N, d]` -> `[N, k]` with
    `out[n, j] = rows[n] @ table[indices[n, j]]`."""
    if not _use_csr(rows) or indices.shape[0] == 0:
        return torch.bmm(table[indices], rows.unsqueeze(-1)).squeeze(-1)
    return _k_sparse_pattern(indices, table.shape[0]).gather_dot(table, rows).view(indices.shape)


@gather_dot.register_fake
def _(table: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return rows.new_empty(indices.shape)


@torch.library.custom_op("sae_lens_attn::scatter_outer", mutates_args=())
def scatter_outer(
    indices: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, n_table_rows: int
) -> torch.Tensor:
    """`indices [N, k]` (int64), `weights [N, k]`, `rows [N, d]` -> `[n_table_rows, d]`
    with `out[f] = sum over (n, j) with indices[n, j] == f of weights[n, j] * rows[n]`."""
    if not _use_csr(rows) or indices.shape[0] == 0:
        source = (weights.unsqueeze(-1) * rows.unsqueeze(1)).reshape(-1, rows.shape[-1])
        return rows.new_zeros(n_table_rows, rows.shape[-1]).index_add_(
            0, indices.reshape(-1), source
        )
    return _k_sparse_pattern(indices, n_table_rows).scatter_outer(weights.reshape(-1), rows)


@scatter_outer.register_fake
def _(
    indices: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, n_table_rows: int
) -> torch.Tensor:
    return rows.new_empty(n_table_rows, rows.shape[-1])
