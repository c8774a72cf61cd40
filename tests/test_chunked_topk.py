"""The chunked per-head TopK encode against a plain dense reference and the dense path.

Reference: `pre = x @ block_diag(W_enc_blocks) + b_enc` as one dense matrix product, then
`topk` inside each head's block (and, for dead features, `topk` of
`where(dead, pre, -inf)`).
"""

from __future__ import annotations

import pytest
import torch

from sae_lens_attn.architectures.chunked_topk import chunked_block_topk
from sae_lens_attn.architectures.per_head_topk import (
    per_head_topk_encode,
    per_head_topk_encode_chunked,
)

N_HEADS, D_HEAD, PER_HEAD, K, K_DEAD = 3, 5, 40, 4, 3


def weights(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(N_HEADS, D_HEAD, PER_HEAD, generator=generator)
    b = torch.randn(N_HEADS * PER_HEAD, generator=generator)
    return W, b


def dense_pre(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`[..., H, m]` pre-activations through the dense block-diagonal matrix."""
    return (x @ torch.block_diag(*W) + b).unflatten(-1, (N_HEADS, PER_HEAD))


def sorted_by_index(
    values: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    order = indices.argsort(-1)
    return values.gather(-1, order), indices.gather(-1, order)


def dead_mask() -> torch.Tensor:
    """Head 0: 10 dead features, head 1: 2 (fewer than K_DEAD), head 2: none."""
    dead = torch.zeros(N_HEADS, PER_HEAD, dtype=torch.bool)
    dead[0, ::4] = True
    dead[1, [5, 17]] = True
    return dead.flatten()


@pytest.mark.parametrize("chunk_rows", [1, 7, 30, 64])
def test_chunks_equal_the_dense_reference_over_leading_dims(chunk_rows):
    W, b = weights()
    x = torch.randn(5, 6, N_HEADS * D_HEAD, generator=torch.Generator().manual_seed(1))
    pre = dense_pre(x, W, b)
    dead = dead_mask()
    top = chunked_block_topk(x, W, b, K, dead, K_DEAD, chunk_rows=chunk_rows)
    expected = pre.topk(K, dim=-1)
    values, indices = sorted_by_index(top.values, top.indices)
    expected_values, expected_indices = sorted_by_index(expected.values, expected.indices)
    assert top.values.shape == (5, 6, N_HEADS, K) and torch.equal(indices, expected_indices)
    torch.testing.assert_close(values, expected_values, rtol=1e-6, atol=1e-6)
    # each head's top K_DEAD dead pre-activations, sorted, -inf past a head's dead count
    expected_dead = torch.where(dead.view(N_HEADS, PER_HEAD), pre, -torch.inf).topk(K_DEAD, dim=-1)
    torch.testing.assert_close(top.dead_values, expected_dead.values, rtol=1e-6, atol=1e-6)
    n_dead = torch.tensor([10, 2, 0])
    taken = torch.arange(K_DEAD) < n_dead.unsqueeze(-1)  # [H, K_DEAD]
    assert torch.equal(top.dead_indices[..., taken], expected_dead.indices[..., taken])
    assert bool(top.dead_values[..., ~taken].isneginf().all())
    assert bool(dead.view(N_HEADS, PER_HEAD)[0, top.dead_indices[..., 0, :]].all())


def test_chunked_encode_equals_the_dense_path_in_values_and_gradients():
    W, b = weights(2)
    x = torch.randn(50, N_HEADS * D_HEAD, generator=torch.Generator().manual_seed(3))
    grads = {}
    codes = {}
    for name in ("dense", "chunked"):
        params = [t.clone().requires_grad_() for t in (x, W, b)]
        if name == "dense":
            code = per_head_topk_encode(*params, K)[1]
        else:
            code = per_head_topk_encode_chunked(*params, K).code
        values, indices = sorted_by_index(*code)
        weights_out = torch.linspace(-1, 1, values.numel()).view(values.shape)
        (values * weights_out).sum().backward()
        codes[name] = (values.detach(), indices)
        grads[name] = [p.grad for p in params]
    assert torch.equal(codes["dense"][1], codes["chunked"][1])
    torch.testing.assert_close(codes["chunked"][0], codes["dense"][0], rtol=1e-6, atol=1e-6)
    for got, expected, name in zip(grads["chunked"], grads["dense"], ("x", "W", "b"), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)


def test_dead_pre_activations_carry_the_gradient_of_a_dense_gather():
    W, b = weights(4)
    x = torch.randn(20, N_HEADS * D_HEAD, generator=torch.Generator().manual_seed(5))
    dead = dead_mask()
    params = [t.clone().requires_grad_() for t in (x, W, b)]
    values, indices = per_head_topk_encode_chunked(*params, K, dead, K_DEAD).dead
    finite = values.detach().isfinite()
    torch.where(finite, values, 0.0).pow(2).sum().backward()
    reference = [t.clone().requires_grad_() for t in (x, W, b)]
    gathered = dense_pre(*reference).gather(-1, indices)
    torch.testing.assert_close(
        values.detach()[finite], gathered.detach()[finite], rtol=1e-6, atol=1e-6
    )
    torch.where(finite, gathered, 0.0).pow(2).sum().backward()
    for got, expected in zip(params, reference, strict=True):
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-5, atol=1e-5)
