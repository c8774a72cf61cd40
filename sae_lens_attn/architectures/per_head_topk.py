"""Per-head TopK of a block-diagonal SAE, sparse where it is sparse.

With k features per head, each token's code is `values [..., H, k]` (after ReLU) and
`indices [..., H, k]` (feature index inside head h's block of `m` features). Only the
pre-activations `[..., H * m]` are dense (TopK must see them all); everything after is
k-sparse:

- decode: `out[b, h] = sum_j values[b, h, j] * W_dec_blocks[h, indices[b, h, j]]`, a
  gather of k decoder rows per head (`embedding_bag`);
- decoder backward: the gradient of `values` is one dot product per selected entry, the
  decoder's gradient touches only the selected rows (`sparse_rows`);
- encoder backward: the gradient of the pre-activations is non-zero only at the selected
  entries, so `W_enc_blocks`, `b_enc` and the input get it from those k columns per
  head, never through a `[batch, d_sae]` gradient.

Values and gradients equal the dense reference (block matmul, SAELens's `TopK` on each
head's block, block matmul) to float precision; ties between pre-activations may pick a
different (equal-valued) feature.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from sae_lens_attn.architectures.block_ops import block_diagonal_matmul
from sae_lens_attn.architectures.sparse_rows import gather_dot, scatter_outer


class PerHeadTopKCode(NamedTuple):
    """A per-head k-sparse code: `values [..., H, k]` (>= 0) and `indices [..., H, k]`
    (int64, feature index inside the head's block)."""

    values: torch.Tensor
    indices: torch.Tensor

    def to_dense(self, d_sae_per_head: int) -> torch.Tensor:
        """The dense feature acts `[..., H * m]` (zeros off the code); differentiable."""
        shape = (*self.values.shape[:-1], d_sae_per_head)
        dense = self.values.new_zeros(shape).scatter(-1, self.indices, self.values)
        return dense.flatten(-2)


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
    """`sae_in [..., H * d_head]` -> `(hidden_pre [..., H * m], code)`.

    `hidden_pre` carries the dense block-matmul gradient (used only if a loss reads it,
    such as the TopK auxiliary loss); the code's values carry the sparse one.
    """
    sae_in, W_enc_blocks, b_enc = _autocast(sae_in, W_enc_blocks, b_enc)
    pre = block_diagonal_matmul(sae_in, W_enc_blocks).add_(b_enc)
    values, indices = _SparseTopK.apply(pre.detach(), sae_in, W_enc_blocks, b_enc, k)
    return pre, PerHeadTopKCode(values, indices)


def per_head_topk_decode(code: PerHeadTopKCode, W_dec_blocks: torch.Tensor) -> torch.Tensor:
    """`code` -> `[..., H * d_head]` (without `b_dec`): k decoder rows per head."""
    values, W_dec_blocks = _autocast(code.values, W_dec_blocks)
    return _SparseDecode.apply(values, code.indices, W_dec_blocks)


def gather_pre(
    pre: torch.Tensor,
    sae_in: torch.Tensor,
    W_enc_blocks: torch.Tensor,
    b_enc: torch.Tensor,
    indices: torch.Tensor,
) -> torch.Tensor:
    """`[..., H, j]` pre-activations at `indices [..., H, j]` (inside each head's block) of
    `pre [..., H * m]` (the encoder's output for `sae_in`, read detached), with the
    gradient sent to `sae_in`, `W_enc_blocks` and `b_enc` through those entries alone:
    what `pre.gather(...)` gives, without a `[batch, d_sae]` gradient and its dense block
    matmul backward (the TopK auxiliary loss reads d_head // 2 entries per head)."""
    sae_in, W_enc_blocks, b_enc = _autocast(sae_in, W_enc_blocks, b_enc)  # as the encoder
    values = pre.detach().unflatten(-1, (W_enc_blocks.shape[0], -1)).gather(-1, indices)
    return _SparseGather.apply(values, indices, sae_in, W_enc_blocks, b_enc)


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


class _SparseTopK(torch.autograd.Function):
    """TopK of each head's block of `pre` (given detached), with the gradient of the
    selected values sent to `sae_in`, `W_enc_blocks` and `b_enc` through those entries."""

    @staticmethod
    def forward(ctx, pre, sae_in, W_enc_blocks, b_enc, k):  # type: ignore[override]
        n_heads, _, per_head = W_enc_blocks.shape
        top = pre.unflatten(-1, (n_heads, per_head)).topk(k, dim=-1, sorted=False)
        values = top.values.relu_()
        ctx.save_for_backward(values, top.indices, sae_in, W_enc_blocks)
        ctx.mark_non_differentiable(top.indices)
        return values, top.indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices):  # type: ignore[override]
        values, indices, sae_in, W_enc_blocks = ctx.saved_tensors
        grad = grad_values.masked_fill(values <= 0, 0).flatten(0, -2)  # ReLU'; [N * H, k]
        needs = ctx.needs_input_grad[1:4]
        return None, *_encoder_grads(needs, grad, indices, sae_in, W_enc_blocks), None


class _SparseGather(torch.autograd.Function):
    """`values` (gathered detached at `indices`) as a function of `sae_in`,
    `W_enc_blocks` and `b_enc`: the gradient flows through those entries alone."""

    @staticmethod
    def forward(ctx, values, indices, sae_in, W_enc_blocks, b_enc):  # type: ignore[override]
        ctx.save_for_backward(indices, sae_in, W_enc_blocks)
        return values.clone()

    @staticmethod
    def backward(ctx, grad_values):  # type: ignore[override]
        indices, sae_in, W_enc_blocks = ctx.saved_tensors
        grad = grad_values.flatten(0, -2)  # [N * H, j]
        needs = ctx.needs_input_grad[2:5]
        return None, None, *_encoder_grads(needs, grad, indices, sae_in, W_enc_blocks)


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
