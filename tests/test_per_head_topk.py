"""Sparse per-head TopK (gather decode, sparse backward) against a dense reference.

The reference is written out here with dense matrices: `pre = (x - b_dec) @ W_enc + b_enc`,
TopK + ReLU inside each head's block of features, `acts @ W_dec + b_dec`, so values and
gradients are checked against plain autograd on the block-diagonal matrices.
"""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput

from sae_lens_attn import (
    BlockDiagonalSAE,
    BlockDiagonalSAEConfig,
    BlockDiagonalTrainingSAE,
    BlockDiagonalTrainingSAEConfig,
)
from sae_lens_attn.architectures import chunked_topk
from sae_lens_attn.architectures.sparse_rows import gather_dot, scatter_outer

N_HEADS, D_HEAD, PER_HEAD, K = 3, 4, 6, 2
D_IN, D_SAE = N_HEADS * D_HEAD, N_HEADS * PER_HEAD
CHUNK_ROWS = 6  # batches of 16, 20, 32 rows: several chunks and a shorter last one


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(chunked_topk, "CHUNK_BYTES", CHUNK_ROWS * D_SAE * 4)


def randomised(sae, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return sae


def training_sae(**changes) -> BlockDiagonalTrainingSAE:
    cfg = BlockDiagonalTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS, activation="topk", k=K, **changes
    )
    return randomised(BlockDiagonalTrainingSAE(cfg))


def inference_sae(**changes) -> BlockDiagonalSAE:
    cfg = BlockDiagonalSAEConfig(
        d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS, activation="topk", k=K, **changes
    )
    return randomised(BlockDiagonalSAE(cfg))


def inputs(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, D_IN, generator=torch.Generator().manual_seed(seed))


def step_input(x: torch.Tensor, dead: torch.Tensor | None = None) -> TrainStepInput:
    return TrainStepInput(
        sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False
    )


class DenseReference(torch.nn.Module):
    """The same SAE as plain dense parameters (zeros off the blocks)."""

    def __init__(self, sae):
        super().__init__()
        self.W_enc = torch.nn.Parameter(torch.block_diag(*sae.W_enc_blocks.detach()))
        self.W_dec = torch.nn.Parameter(torch.block_diag(*sae.W_dec_blocks.detach()))
        self.b_enc = torch.nn.Parameter(sae.b_enc.detach().clone())
        self.b_dec = torch.nn.Parameter(sae.b_dec.detach().clone())
        self.apply_b_dec_to_input = sae.cfg.apply_b_dec_to_input

    def acts_and_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = (x - self.b_dec * self.apply_b_dec_to_input) @ self.W_enc + self.b_enc
        heads = pre.unflatten(-1, (N_HEADS, PER_HEAD))
        top = heads.topk(K, dim=-1)
        acts = torch.zeros_like(heads).scatter(-1, top.indices, top.values.relu())
        return acts.flatten(-2), pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.acts_and_pre(x)[0] @ self.W_dec + self.b_dec

    def block_grads(self) -> dict[str, torch.Tensor]:
        def blocks(full: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
            return torch.stack(
                [full[h * rows : (h + 1) * rows, h * cols : (h + 1) * cols] for h in range(N_HEADS)]
            )

        grads = {"b_enc": self.b_enc.grad, "b_dec": self.b_dec.grad}
        grads["W_enc_blocks"] = blocks(self.W_enc.grad, D_HEAD, PER_HEAD)
        if self.W_dec.grad is not None:
            grads["W_dec_blocks"] = blocks(self.W_dec.grad, PER_HEAD, D_HEAD)
        return grads


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
def test_sparse_training_step_equals_the_dense_reference_in_values_and_gradients(
    apply_b_dec_to_input,
):
    ours = training_sae(apply_b_dec_to_input=apply_b_dec_to_input)
    reference = DenseReference(ours)
    x = inputs(32)
    output = ours.training_forward_pass(step_input(x))
    assert output.feature_acts.is_sparse  # the sparse path ran
    expected_acts, expected_pre = reference.acts_and_pre(x)
    expected_out = expected_acts @ reference.W_dec + reference.b_dec
    torch.testing.assert_close(
        output.feature_acts.to_dense(), expected_acts.detach(), rtol=1e-5, atol=1e-5
    )
    # hidden_pre: the pre-activations at the entries TopK selected, a detached sparse tensor
    selected = expected_pre.detach().unflatten(-1, (N_HEADS, PER_HEAD)).topk(K, dim=-1).indices
    expected_selected = torch.zeros(32, N_HEADS, PER_HEAD, dtype=torch.bool).scatter_(
        -1, selected, True
    )
    pre = output.hidden_pre.coalesce()
    assert pre.shape == (32, D_SAE) and not pre.requires_grad
    assert torch.equal(
        torch.zeros(32, D_SAE, dtype=torch.bool).index_put_(
            tuple(pre.indices()), torch.tensor(True)
        ),
        expected_selected.flatten(-2),
    )
    torch.testing.assert_close(
        pre.values(), expected_pre.detach()[tuple(pre.indices())], rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(output.sae_out, expected_out, rtol=1e-5, atol=1e-5)
    output.loss.backward()
    (expected_out - x).pow(2).sum(-1).mean().backward()
    grads = reference.block_grads()
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("dead_features", [[0, 3, 7, 8, 14], [0, 3, 4], list(range(D_SAE))])
def test_sparse_step_with_the_auxiliary_loss_equals_the_dense_path(dead_features):
    """The auxiliary loss reads d_head // 2 dead pre-activations a head, taken by the
    chunked encode: their gradient joins the sparse one. Losses and gradients equal those
    of our hooked dense path, whose auxiliary loss gathers from the dense pre-activations
    (which tests/test_block_diagonal.py checks against SAELens's own TopK auxiliary
    loss). Dead sets: a head with fewer dead features than d_head // 2; heads without
    any; every feature dead."""
    ours = training_sae(aux_loss_coefficient=0.3)
    x = inputs(16)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[dead_features] = True
    sparse = ours.training_forward_pass(step_input(x, dead))
    assert sparse.feature_acts.is_sparse
    sparse.loss.backward()
    sparse_grads = {name: p.grad.clone() for name, p in ours.named_parameters()}
    ours.zero_grad()
    ours.hook_sae_acts_post.add_hook(lambda acts, hook: acts)  # forces the dense path
    dense = ours.training_forward_pass(step_input(x, dead))
    assert not dense.feature_acts.is_sparse
    dense.loss.backward()
    assert dense.losses["auxiliary_reconstruction_loss"] > 0
    for name in ("mse_loss", "auxiliary_reconstruction_loss"):
        torch.testing.assert_close(sparse.losses[name], dense.losses[name], rtol=1e-5, atol=1e-5)
    for name, param in ours.named_parameters():
        torch.testing.assert_close(sparse_grads[name], param.grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("with_dead", [False, True])
def test_sparse_step_touches_no_batch_by_d_sae_tensor(with_dead):
    """The forward computes the pre-activations a chunk of rows at a time, and the
    backward works on `[batch, H, k]` codes and `[batch, d_head]` rows only: no op sees a
    `[batch, d_sae]` tensor, also when dead features make the auxiliary loss read
    d_head // 2 pre-activations a head."""
    ours = training_sae(aux_loss_coefficient=0.3)
    batch = 64
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[[0, 3, 7, 8, 14]] = with_dead
    with torch.profiler.profile(record_shapes=True) as forward:
        output = ours.training_forward_pass(step_input(inputs(batch), dead))
    assert (output.losses["auxiliary_reconstruction_loss"] > 0) == with_dead
    with torch.profiler.profile(record_shapes=True) as backward:
        output.loss.backward()
    dense_shapes = ([batch, D_SAE], [batch, N_HEADS, PER_HEAD], [N_HEADS, batch, PER_HEAD])
    events = [*forward.events(), *backward.events()]
    seen = [
        (e.name, e.input_shapes) for e in events if any(s in e.input_shapes for s in dense_shapes)
    ]
    assert not seen, seen
    assert any(
        e.name == "aten::baddbmm" and [N_HEADS, CHUNK_ROWS, PER_HEAD] in e.input_shapes
        for e in events
    )
    assert any(e.name == "sae_lens_attn::scatter_outer" for e in backward.events())


def test_inference_encode_and_forward_equal_the_dense_reference_over_leading_dims():
    ours = inference_sae()
    reference = DenseReference(ours)
    x = inputs(2, 5)  # [batch, pos, d_in]
    with torch.no_grad():
        expected_acts, _ = reference.acts_and_pre(x)
        torch.testing.assert_close(ours.encode(x), expected_acts, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.decode(ours.encode(x)), reference(x), rtol=1e-5, atol=1e-5)
    hook_z = x.unflatten(-1, (N_HEADS, D_HEAD))
    ours.turn_on_forward_pass_hook_z_reshaping()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(hook_z), reference(x).unflatten(-1, (N_HEADS, D_HEAD)), rtol=1e-5, atol=1e-5
        )


def test_encode_with_gradients_equals_the_dense_reference():
    ours = inference_sae()
    reference = DenseReference(ours)
    x = inputs(8)
    weights = torch.randn(8, D_SAE, generator=torch.Generator().manual_seed(3))
    (ours.encode(x) * weights).sum().backward()
    (reference.acts_and_pre(x)[0] * weights).sum().backward()
    grads = reference.block_grads()
    for name in ("W_enc_blocks", "b_enc", "b_dec"):
        torch.testing.assert_close(
            getattr(ours, name).grad, grads[name], rtol=1e-5, atol=1e-5, msg=name
        )


def test_a_hook_on_the_acts_sees_and_changes_the_dense_acts():
    ours = inference_sae()
    x = inputs(6)
    seen = []

    def zero_head_0(acts, hook):
        seen.append(acts.clone())
        acts = acts.clone()
        acts[:, :PER_HEAD] = 0
        return acts

    with torch.no_grad():
        acts = ours.encode(x)
        ours.hook_sae_acts_post.add_hook(zero_head_0)
        out = ours(x)
        ours.reset_hooks()
        expected_acts = acts.clone()
        expected_acts[:, :PER_HEAD] = 0
        expected = ours.decode(expected_acts)
    assert len(seen) == 1 and seen[0].shape == (6, D_SAE) and not seen[0].is_sparse
    torch.testing.assert_close(seen[0], acts, rtol=0, atol=0)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Setting use_error_term directly:DeprecationWarning")
def test_error_term_forward_reconstructs_the_input_exactly():
    ours = inference_sae()
    ours.use_error_term = True
    x = inputs(5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), x, rtol=0, atol=1e-5)


def test_sparse_acts_feed_saelens_trainer_bookkeeping():
    """SAELens's trainer counts firings with `.bool().float().sum(...)` on the acts."""
    ours = training_sae()
    x = inputs(20)
    acts = ours.training_forward_pass(step_input(x)).feature_acts
    dense = DenseReference(ours).acts_and_pre(x)[0].detach()
    firing = acts.bool().float()
    torch.testing.assert_close(firing.sum(0).to_dense(), (dense > 0).float().sum(0))
    assert torch.equal(firing.sum(-2).to_dense().bool(), (dense > 0).any(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_kernels_equal_gather_and_sum(dtype):
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(10, 4, generator=generator).to(dtype)
    indices = torch.randint(0, 10, (7, 3), generator=generator)
    weights = torch.randn(7, 3, generator=generator).to(dtype)
    rows = torch.randn(7, 4, generator=generator).to(dtype)
    expected_dot = (table[indices].float() * rows.float().unsqueeze(1)).sum(-1)
    expected_scatter = torch.zeros(10, 4)
    for n in range(7):
        for j in range(3):
            expected_scatter[indices[n, j]] += weights[n, j].float() * rows[n].float()
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(
        gather_dot(table, indices, rows).float(), expected_dot, rtol=tolerance, atol=tolerance
    )
    out = scatter_outer(indices, weights, rows, 10)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected_scatter, rtol=tolerance, atol=tolerance)


def test_autocast_sparse_step_is_bfloat16_with_float32_gradients_close_to_float32():
    ours, reference = training_sae(), training_sae()
    x = inputs(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = ours.training_forward_pass(step_input(x))
    assert output.feature_acts.is_sparse and output.feature_acts.dtype == torch.bfloat16
    output.loss.backward()
    reference.training_forward_pass(step_input(x)).loss.backward()
    for param, ref in zip(ours.parameters(), reference.parameters(), strict=True):
        assert param.grad.dtype == torch.float32
        torch.testing.assert_close(param.grad, ref.grad, rtol=0.1, atol=0.1)


def test_torch_compile_captures_the_sparse_encode_and_decode():
    """Dynamo + AOTAutograd capture of the sparse path, forward and backward (backend
    aot_eager: the graph capture `compile_sae` relies on, without minutes of C++ code
    generation; benchmarks/block_diagonal.py --compile runs the whole step)."""
    ours = training_sae()
    x = inputs(16)

    def reconstruction_loss(sae_in: torch.Tensor) -> torch.Tensor:
        return (ours._decode_topk_code(ours._encode_topk_code(sae_in).code) - sae_in).pow(2).sum()

    reconstruction_loss(x).backward()
    expected_grads = {name: p.grad.clone() for name, p in ours.named_parameters()}
    ours.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(reconstruction_loss, backend="aot_eager", fullgraph=True)
    compiled(x).backward()
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, expected_grads[name], rtol=1e-6, atol=1e-6, msg=name)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("autocast", [False, True])
def test_cuda_sparse_step_matches_cpu(autocast):
    """On CUDA the row kernels gather and index_add instead of CSR products."""
    cpu = training_sae()
    gpu = training_sae().to("cuda")
    x = inputs(64)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        output = gpu.training_forward_pass(step_input(x.cuda()))
    assert output.feature_acts.is_sparse
    output.loss.backward()
    cpu.training_forward_pass(step_input(x)).loss.backward()
    tolerance = 0.1 if autocast else 1e-4
    torch.testing.assert_close(
        output.sae_out.float().cpu(), cpu(x).detach(), rtol=tolerance, atol=tolerance
    )
    for (name, param), ref in zip(gpu.named_parameters(), cpu.parameters(), strict=True):
        torch.testing.assert_close(
            param.grad.cpu(), ref.grad, rtol=tolerance, atol=tolerance, msg=name
        )
