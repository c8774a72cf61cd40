"""Per-head TopK of a block-diagonal SAE, sparse where it is sparse.

With k features per head, each token's code is `values [..., H, k]` (after ReLU) and
`indices [..., H, k]` (feature index inside head h's block of `m` features). Only the
pre-activations `[..., H * m]` are dense (TopK must see them all), and
`per_head_topk_encode_chunked` makes them a chunk of rows at a time, never the whole
`[batch, d_sae]` tensor (`chunked_topk`); everything after is k-sparse:

- decode: `out[b, h] = sum_j values[b, h, j] * W_dec_blocks[h, indices[b, h, j]]`, a
  gather of k decoder rows per head (`embedding_bag`);
- decoder backward: the gradient of `values` is one dot product per selected entry, the
  decoder's gradient touches only the selected rows (`sparse_rows`);
- encoder backward: the gradient of the pre-activations is non-zero only at the selected
  entries, so `W_enc_blocks`, `b_enc` and the input get it from those k columns per
  head, never through a `[batch, d_sae]` gradient. The TopK auxiliary loss's dead
  pre-activations (taken in the same chunks) get their gradient the same way.

Values and gradients equal the dense reference (block matmul, SAELens's `TopK` on each
head's block, block matmul) to float precision; ties between pre-activations may pick a
different (equal-valued) feature.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from sae_lens_attn.architectures.block_ops import block_diagonal_matmul
from sae_lens_attn.architectures.chunked_topk import chunked_block_topk
from sae_lens_attn.architectures.sparse_rows import gather_dot, scatter_outer


class PerHeadTopKCode(NamedTuple):
    """A per-head k-sparse code: `values [..., H, k]` (>= 0) and `indices [..., H, k]`
    (int64, feature index inside the head's block)."""

    values: torch.Tensor
    indices: torch.Tensor

    def to_dense(self, d_sae_per_head: int) -> torch.Tensor:
        """The dense feature acts `[..., H * m]` (zeros off the code); differentiable."""
        shape = (*self.values.shape[:-1], d_sae_per_head)
        # in place into the fresh zeros: one [..., H * m] allocation, still differentiable
        return self.values.new_zeros(shape).scatter_(-1, self.indices, self.values).flatten(-2)


def _autocast(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cast floating tensors to the autocast dtype when autocast is on (as a matmul
    would); autograd casts their gradients back."""
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in tensors)


def _global_rows(indices: torch.Tensor, d_sae_per_head: int) -> torch.Tensor:
    """`[N, H, k]` within-head indices -> `[N * H, k]` rows of the `[H * m, d]` tables."""
    n_heads = indices.shape[-2]
    offsets = torch.arange(n_heads, device=indices.device) * d_sae_per_head
    return (indices + offsets.view(n_heads, 1)).flatten(0, -2)


def per_head_topk_encode(
    sae_in: torch.Tensor, W_enc_blocks: torch.Tensor, b_enc: torch.Tensor, k: int
) -> tuple[torch.Tensor, PerHeadTopKCode]:
    """`sae_in [..., H * d_head]` -> `(hidden_pre [..., H * m], code)`, for callers that
    need the dense pre-activations (`per_head_topk_encode_chunked` never makes them).

    `hidden_pre` carries the dense block-matmul gradient (used only if a loss reads it);
    the code's values carry the sparse one.
    """
    sae_in, W_enc_blocks, b_enc = _autocast(sae_in, W_enc_blocks, b_enc)
    pre = block_diagonal_matmul(sae_in, W_enc_blocks).add_(b_enc)
    top = pre.detach().unflatten(-1, (W_enc_blocks.shape[0], -1)).topk(k, dim=-1, sorted=False)
    values = _AtEntries.apply(top.values, top.indices, sae_in, W_enc_blocks, b_enc, True)
    return pre, PerHeadTopKCode(values, top.indices)


class ChunkedEncoding(NamedTuple):
    """What `per_head_topk_encode_chunked` returns.

    Attributes:
        code: the per-head TopK code (values with the sparse gradient).
        selected_pre: `[..., H, k]` detached pre-activations at the code's entries
            (before the ReLU).
        dead: `(values, indices)` `[..., H, k_dead]`: each head's top `k_dead`
            pre-activations among the dead features (sorted, -inf where a head has
            fewer), values with the sparse gradient; None without a dead mask.
    """

    code: PerHeadTopKCode
    selected_pre: torch.Tensor
    dead: tuple[torch.Tensor, torch.Tensor] | None


def per_head_topk_encode_chunked(
    sae_in: torch.Tensor,
    W_enc_blocks: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    dead: torch.Tensor | None = None,
    k_dead: int = 0,
) -> ChunkedEncoding:
    """`sae_in [..., H * d_head]` -> its per-head TopK code, computed a chunk of rows at
    a time (`chunked_block_topk`): the dense `[..., H * m]` pre-activations never exist.
    With `dead [H * m]` (bool), also each head's top `k_dead` dead pre-activations (what
    the TopK auxiliary loss reads). Gradients flow through the selected entries alone."""
    sae_in, W_enc_blocks, b_enc = _autocast(sae_in, W_enc_blocks, b_enc)
    with torch.autocast(sae_in.device.type, enabled=False):  # inputs already cast; out= refuses it
        top = chunked_block_topk(sae_in, W_enc_blocks, b_enc, k, dead, k_dead)
    encoder = (sae_in, W_enc_blocks, b_enc)
    code = PerHeadTopKCode(_AtEntries.apply(top.values, top.indices, *encoder, True), top.indices)
    dead_pre = None
    if top.dead_values is not None and top.dead_indices is not None:
        dead_values = _AtEntries.apply(top.dead_values, top.dead_indices, *encoder, False)
        dead_pre = (dead_values, top.dead_indices)
    return ChunkedEncoding(code, top.values, dead_pre)


def per_head_topk_decode(code: PerHeadTopKCode, W_dec_blocks: torch.Tensor) -> torch.Tensor:
    """`code` -> `[..., H * d_head]` (without `b_dec`): k decoder rows per head."""
    values, W_dec_blocks = _autocast(code.values, W_dec_blocks)
    return _SparseDecode.apply(values, code.indices, W_dec_blocks)


def _encoder_grads(
    needs: tuple[bool, ...],
    grad: torch.Tensor,
    indices: torch.Tensor,
    sae_in: torch.Tensor,
    W_enc_blocks: torch.Tensor,
) -> tuple[torch.Tensor | None, ...]:
    """Gradients of `sae_in`, `W_enc_blocks`, `b_enc` (where `needs`, three bools, asks)
    from `grad [N * H, j]` of the pre-activations at `indices [..., H, j]`."""
    n_heads, d_head, per_head = W_enc_blocks.shape
    rows = _global_rows(indices, per_head)
    grad_in = grad_w = grad_b = None
    if needs[0]:
        table = W_enc_blocks.transpose(1, 2).reshape(n_heads * per_head, d_head)
        grad_in = F.embedding_bag(rows, table, per_sample_weights=grad, mode="sum")
        grad_in = grad_in.view(sae_in.shape)
    if needs[1]:
        sae_rows = sae_in.reshape(-1, d_head)
        grad_w = scatter_outer(rows, grad, sae_rows, n_heads * per_head)
        grad_w = grad_w.view(n_heads, per_head, d_head).transpose(1, 2)
    if needs[2]:
        grad_b = grad.new_zeros(n_heads * per_head).index_add_(0, rows.flatten(), grad.flatten())
    return grad_in, grad_w, grad_b


class _AtEntries(torch.autograd.Function):
    """`values [..., H, j]`, the encoder's pre-activations at `indices` (computed
    detached), as a function of `sae_in`, `W_enc_blocks` and `b_enc`, ReLU'd when `relu`
    is True: the gradient flows through those entries alone."""

    @staticmethod
    def forward(ctx, values, indices, sae_in, W_enc_blocks, b_enc, relu):  # type: ignore[override]
        out = values.relu() if relu else values.clone()
        ctx.relu = relu
        ctx.save_for_backward(out, indices, sae_in, W_enc_blocks)
        return out

    @staticmethod
    def backward(ctx, grad_values):  # type: ignore[override]
        out, indices, sae_in, W_enc_blocks = ctx.saved_tensors
        if ctx.relu:
            grad_values = grad_values.masked_fill(out <= 0, 0)  # ReLU'
        grad = grad_values.flatten(0, -2)  # [N * H, j]
        needs = ctx.needs_input_grad[2:5]
        return None, None, *_encoder_grads(needs, grad, indices, sae_in, W_enc_blocks), None


class _SparseDecode(torch.autograd.Function):
    """`out[..., h, :] = sum_j values[..., h, j] * W_dec_blocks[h, indices[..., h, j]]`."""

    @staticmethod
    def forward(ctx, values, indices, W_dec_blocks):  # type: ignore[override]
        n_heads, per_head, d_head = W_dec_blocks.shape
        rows = _global_rows(indices, per_head)
        table = W_dec_blocks.reshape(n_heads * per_head, d_head)
        out = F.embedding_bag(rows, table, per_sample_weights=values.flatten(0, -2), mode="sum")
        ctx.save_for_backward(values, rows, W_dec_blocks)
        return out.view(*values.shape[:-2], n_heads * d_head)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        values, rows, W_dec_blocks = ctx.saved_tensors
        n_heads, per_head, d_head = W_dec_blocks.shape
        grad_rows = grad_out.reshape(-1, d_head)  # [N * H, d_head]
        grad_values = grad_w = None
        if ctx.needs_input_grad[0]:
            table = W_dec_blocks.reshape(n_heads * per_head, d_head)
            grad_values = gather_dot(table, rows, grad_rows).view(values.shape)
        if ctx.needs_input_grad[2]:
            grad_w = scatter_outer(rows, values.flatten(0, -2), grad_rows, n_heads * per_head)
            grad_w = grad_w.view(n_heads, per_head, d_head)
        return grad_values, None, grad_w
