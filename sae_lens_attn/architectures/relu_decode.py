"""The ReLU step of a block-diagonal training pass as one autograd node that owns its
`[batch, d_sae]` gradient buffer.

`relu_decode(pre, W_dec_blocks)` returns `acts = relu(pre)`, `decoded = acts @
blockdiag(W_dec_blocks)` and `token_sum = acts.sum over tokens` (what the L1 term needs).
Its backward computes the acts' gradient from the decoder into a fresh buffer, adds the
L1 term's broadcast gradient (and any direct gradient of `acts`) into it in place, and
applies ReLU's derivative in place too (`threshold_backward` written into the same
buffer), which it then returns as the gradient of `pre`. Autograd's own chain
(bmm, add, `threshold_backward`) allocates a second `[batch, d_sae]` gradient for that
last step; on a CPU each such allocation costs a full pass of page faults and zeroing.
The in-place step is safe here because the buffer is made by this backward and handed
to no one else.
"""

from __future__ import annotations

import torch

from sae_lens_attn.architectures.block_ops import heads_matmul, heads_outer


def relu_decode(
    pre: torch.Tensor, W_dec_blocks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pre [..., H * m]` -> `(acts [..., H * m], decoded [..., H * d_head], token_sum [H * m])`
    (`decoded` without `b_dec`). Under autocast the decoder is cast like a matmul's."""
    device_type = pre.device.type
    if torch.is_autocast_enabled(device_type):
        W_dec_blocks = W_dec_blocks.to(torch.get_autocast_dtype(device_type))
    return _ReluDecode.apply(pre, W_dec_blocks)


class _ReluDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, W_dec_blocks):  # type: ignore[override]
        acts = pre.relu()
        decoded = heads_matmul(acts, W_dec_blocks)
        token_sum = acts.reshape(-1, acts.shape[-1]).sum(0)
        ctx.save_for_backward(acts, W_dec_blocks)
        ctx.set_materialize_grads(False)
        return acts, decoded, token_sum

    @staticmethod
    def backward(ctx, grad_acts, grad_decoded, grad_token_sum):  # type: ignore[override]
        acts, W_dec_blocks = ctx.saved_tensors
        grad_w = None
        if grad_decoded is None:
            grad = torch.zeros_like(acts)
        else:
            grad = heads_matmul(grad_decoded, W_dec_blocks.transpose(1, 2))  # ours alone
            if ctx.needs_input_grad[1]:
                grad_w = heads_outer(acts, grad_decoded, W_dec_blocks.shape[0])
        if grad_token_sum is not None:
            grad.add_(grad_token_sum)
        if grad_acts is not None:
            grad.add_(grad_acts)
        torch.ops.aten.threshold_backward.grad_input(grad, acts, 0, grad_input=grad)
        return grad, grad_w
