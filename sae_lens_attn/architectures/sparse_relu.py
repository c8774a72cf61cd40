"""The ReLU step of a block-diagonal training pass at its sparsity.

After the ReLU only L0 of each head's `m` features are non-zero (20-250 of 2048 on the
SAEs we train). `sparse_relu_decode(pre, sae_in, W_enc_blocks, b_enc, W_dec_blocks)`
returns what `relu_decode` returns (`acts`, `decoded`, `token_sum`) but computes
everything after the ReLU from the non-zero activations alone, as a CSR pattern with one
bag per (token, head) (`sparse_rows.RowPattern`):

- decode: `decoded[b, h] = sum over head h's active features f of acts[b, f] * W_dec[f]`
  (`embedding_bag`); the L1 term's token sum adds up the non-zeros;
- backward: the pre-activations' gradient is non-zero only at the active entries (ReLU'),
  so it is one value per entry: the decoder's gradient dotted with the entry's decoder
  row, plus the L1 term's and any direct gradient of `acts`. From those values
  `W_dec_blocks`, `W_enc_blocks`, `b_enc` and the input get their gradients through
  sparse products; no `[batch, d_sae]` gradient is ever made.

`pre` is taken detached: the encoder's gradient flows through this node, not through the
dense product that made `pre` (which keeps its own graph for anyone else reading it).

`sparse_pays(pre)` chooses the path per step: the density of `pre > 0` measured on up to
`DENSITY_SAMPLE_TOKENS` evenly spaced tokens against `SPARSE_MAX_DENSITY`, the crossover
measured with `benchmarks/block_diagonal.py --densities` (docs/performance.md). The
sparse path runs on CPU in float32/float64 without autocast and outside `torch.compile`
(its sizes depend on the data); elsewhere the dense `relu_decode` runs.
"""

from __future__ import annotations

import torch

from sae_lens_attn.architectures.sparse_rows import RowPattern

# Sparse when fewer than this share of the batch's activations is non-zero. Measured on
# the gpt2-small shape (batch 4096, 12 heads x 2048): see docs/performance.md.
SPARSE_MAX_DENSITY = 0.05
DENSITY_SAMPLE_TOKENS = 256


def sampled_density(pre: torch.Tensor, n_features: int) -> float:
    """Share of `pre [..., n_features] > 0` over up to `DENSITY_SAMPLE_TOKENS` evenly
    spaced tokens (NaN counts as inactive, as ReLU's derivative there is 0)."""
    rows = pre.reshape(-1, n_features)
    sample = rows[:: max(1, rows.shape[0] // DENSITY_SAMPLE_TOKENS)]
    return float(torch.count_nonzero(sample > 0)) / max(1, sample.numel())


def sparse_pays(pre: torch.Tensor, n_features: int) -> bool:
    """True when the sparse ReLU step should run for these pre-activations."""
    device_type = pre.device.type
    if device_type != "cpu" or pre.dtype not in (torch.float32, torch.float64):
        return False
    if torch.is_autocast_enabled(device_type) or torch.compiler.is_compiling():
        return False
    return sampled_density(pre, n_features) < SPARSE_MAX_DENSITY


def sparse_relu_decode(
    pre: torch.Tensor,
    sae_in: torch.Tensor,
    W_enc_blocks: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec_blocks: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pre [..., H * m]` (detached), `sae_in [..., H * d_head]`, `W_enc_blocks [H, d_head,
    m]`, `b_enc [H * m]`, `W_dec_blocks [H, m, d_head]` -> `(acts [..., H * m], decoded
    [..., H * d_head], token_sum [H * m])`, `decoded` without `b_dec`."""
    return _SparseReluDecode.apply(pre.detach(), sae_in, W_enc_blocks, b_enc, W_dec_blocks)


class _SparseReluDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, sae_in, W_enc_blocks, b_enc, W_dec_blocks):  # type: ignore[override]
        n_heads, per_head, d_head = W_dec_blocks.shape
        n_features = n_heads * per_head
        acts = pre.relu()
        flat = acts.view(-1, n_features)
        token, feature = flat.nonzero().unbind(1)  # sorted by token, then feature
        position = token * n_features + feature
        values = acts.view(-1)[position]
        pattern = RowPattern.of_bags(
            token * n_heads + feature // per_head, feature, flat.shape[0] * n_heads, n_features
        )
        decoded = pattern.matmul(values, W_dec_blocks.reshape(n_features, d_head))
        token_sum = values.new_zeros(n_features).index_add_(0, feature, values)
        ctx.pattern = pattern
        ctx.save_for_backward(values, position, sae_in, W_enc_blocks, W_dec_blocks)
        ctx.set_materialize_grads(False)
        return acts, decoded.view(*acts.shape[:-1], n_heads * d_head), token_sum

    @staticmethod
    def backward(ctx, grad_acts, grad_decoded, grad_token_sum):  # type: ignore[override]
        values, position, sae_in, W_enc_blocks, W_dec_blocks = ctx.saved_tensors
        pattern: RowPattern = ctx.pattern
        n_heads, per_head, d_head = W_dec_blocks.shape
        n_features = n_heads * per_head
        feature = pattern.col
        grad_w_dec = None
        if grad_decoded is None:
            grad = values.new_zeros(values.shape)
        else:
            grad_rows = grad_decoded.reshape(-1, d_head)  # [tokens * H, d_head]
            grad = pattern.gather_dot(W_dec_blocks.reshape(n_features, d_head), grad_rows)
            if ctx.needs_input_grad[4]:
                grad_w_dec = pattern.scatter_outer(values, grad_rows).view(W_dec_blocks.shape)
        if grad_token_sum is not None:
            grad = grad + grad_token_sum[feature]
        if grad_acts is not None:
            grad = grad + grad_acts.reshape(-1)[position]
        grad = grad.masked_fill(
            ~(values > 0), 0
        )  # ReLU': NaN entries get none, as in the dense path
        grad_in = grad_w_enc = grad_b_enc = None
        if ctx.needs_input_grad[1]:
            table = W_enc_blocks.transpose(1, 2).reshape(n_features, d_head)
            grad_in = pattern.matmul(grad, table).view(sae_in.shape)
        if ctx.needs_input_grad[2]:
            grad_w_enc = pattern.scatter_outer(grad, sae_in.reshape(-1, d_head))
            grad_w_enc = grad_w_enc.view(n_heads, per_head, d_head).transpose(1, 2).contiguous()
        if ctx.needs_input_grad[3]:
            grad_b_enc = grad.new_zeros(n_features).index_add_(0, feature, grad)
        return None, grad_in, grad_w_enc, grad_b_enc, grad_w_dec
