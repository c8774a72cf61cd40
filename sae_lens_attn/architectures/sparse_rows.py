"""Row kernels for k-sparse codes: each of N bags picks k rows of a table `[F, d]`.

A k-sparse code is `indices [N, k]` (rows of the table) with `weights [N, k]`. Decoding it
is `torch.nn.functional.embedding_bag` (a gather-weighted-sum that never materialises
the `[N, k, d]` gathered rows); its two backward products are the ops here:

- `gather_dot(table, indices, rows)`: `out[n, j] = rows[n] @ table[indices[n, j]]`, the
  gradient with respect to the weights (a sampled dense-dense product);
- `scatter_outer(indices, weights, rows, n_table_rows)`: `out[f] = sum over (n, j) with
  indices[n, j] == f of weights[n, j] * rows[n]`, the gradient with respect to the table.

On CPU in float32/float64 both run as sparse CSR products (`torch.sparse.sampled_addmm`
and a CSR @ dense matmul), measured 3-8x faster there than gathering `[N * k, d]` rows and
reducing them; elsewhere (bf16, CUDA) they gather and `index_add_`. They are
`torch.library` custom ops, so `torch.compile` treats them as opaque calls (Dynamo
cannot trace sparse CSR tensors).
"""

from __future__ import annotations

import warnings

import torch

_CSR_DTYPES = (torch.float32, torch.float64)


def _use_csr(tensor: torch.Tensor) -> bool:
    return tensor.device.type == "cpu" and tensor.dtype in _CSR_DTYPES


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we pin it in tests
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


@torch.library.custom_op("sae_lens_attn::gather_dot", mutates_args=())
def gather_dot(table: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`table [F, d]`, `indices [N, k]` (int64), `rows [N, d]` -> `[N, k]` with
    `out[n, j] = rows[n] @ table[indices[n, j]]`."""
    n_bags, k = indices.shape
    if not _use_csr(rows) or n_bags == 0:
        return torch.bmm(table[indices], rows.unsqueeze(-1)).squeeze(-1)
    crow = torch.arange(0, n_bags * k + 1, k, device=indices.device)
    pattern = _csr(crow, indices.reshape(-1), rows.new_zeros(n_bags * k), (n_bags, table.shape[0]))
    product = torch.sparse.sampled_addmm(pattern, rows.contiguous(), table.t(), beta=0.0)
    return product.values().view(n_bags, k)


@gather_dot.register_fake
def _(table: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return rows.new_empty(indices.shape)


@torch.library.custom_op("sae_lens_attn::scatter_outer", mutates_args=())
def scatter_outer(
    indices: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, n_table_rows: int
) -> torch.Tensor:
    """`indices [N, k]` (int64), `weights [N, k]`, `rows [N, d]` -> `[n_table_rows, d]`
    with `out[f] = sum over (n, j) with indices[n, j] == f of weights[n, j] * rows[n]`."""
    n_bags, k = indices.shape
    flat = indices.reshape(-1)
    if not _use_csr(rows) or n_bags == 0:
        source = (weights.unsqueeze(-1) * rows.unsqueeze(1)).reshape(-1, rows.shape[-1])
        return rows.new_zeros(n_table_rows, rows.shape[-1]).index_add_(0, flat, source)
    order = flat.argsort()  # entries grouped by table row: the CSR of the transposed code
    crow = flat.new_zeros(n_table_rows + 1)
    torch.cumsum(torch.bincount(flat, minlength=n_table_rows), 0, out=crow[1:])
    transposed = _csr(crow, order // k, weights.reshape(-1)[order], (n_table_rows, n_bags))
    return transposed @ rows.contiguous()


@scatter_outer.register_fake
def _(indices: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor, n_table_rows: int) -> torch.Tensor:
    return rows.new_empty(n_table_rows, rows.shape[-1])
