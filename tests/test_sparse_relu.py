"""The sparse ReLU step (non-zero activations only) against the dense one it replaces."""

from __future__ import annotations

import re

import pytest
import torch
from sae_lens import LoggingConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainStepInput
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_attn import BlockDiagonalTrainingSAE, BlockDiagonalTrainingSAEConfig
from sae_lens_attn.architectures import _block_diagonal, sparse_relu
from sae_lens_attn.architectures.block_ops import block_diagonal_matmul
from sae_lens_attn.architectures.relu_decode import relu_decode
from sae_lens_attn.architectures.sparse_relu import sparse_pays, sparse_relu_decode
from sae_lens_attn.training.trainer import DivergenceCheckedTrainer, TrainingDiverged

N_HEADS, D_HEAD, PER_HEAD, BATCH = 3, 8, 32, 64
D_IN, D_SAE = N_HEADS * D_HEAD, N_HEADS * PER_HEAD
PATHS = {"sparse": 2.0, "dense": 0.0}  # SPARSE_MAX_DENSITY that forces each path


def sae_at_density(density: float, seed: int = 0) -> BlockDiagonalTrainingSAE:
    """Random blocks; `b_enc` set so that each feature fires on `density` of the
    `inputs()` tokens (0: none, 1: all)."""
    sae = BlockDiagonalTrainingSAE(
        BlockDiagonalTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS, l1_coefficient=0.7)
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        pre = block_diagonal_matmul(inputs() - sae.b_dec, sae.W_enc_blocks)
        sae.b_enc.copy_(0.01 - pre.quantile(1 - density, dim=0) + 0.02 * (density == 0.0))
    return sae


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(BATCH, D_IN, generator=torch.Generator().manual_seed(seed))


def spy_on_the_sparse_path(monkeypatch) -> list[int]:
    """A list that grows by one item each time the training pass takes the sparse path."""
    calls: list[int] = []
    monkeypatch.setattr(
        _block_diagonal, "sparse_relu_decode", lambda *a: calls.append(1) or sparse_relu_decode(*a)
    )
    return calls


def step(
    sae: BlockDiagonalTrainingSAE, x: torch.Tensor, path: str, monkeypatch
) -> dict[str, torch.Tensor]:
    """One training pass and backward on `path` (checked to be the one that ran):
    outputs, losses and every gradient."""
    monkeypatch.setattr(sparse_relu, "SPARSE_MAX_DENSITY", PATHS[path])
    calls = spy_on_the_sparse_path(monkeypatch)
    sae.zero_grad()
    output = sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients={"l1": 0.7},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        )
    )
    output.loss.backward()
    assert len(calls) == (path == "sparse")
    result = {
        "sae_out": output.sae_out,
        "feature_acts": output.feature_acts,
        "loss": output.loss,
        **output.losses,
        "fired": (output.feature_acts > 0).sum(0),
    }
    return {**result, **{f"grad {name}": p.grad.clone() for name, p in sae.named_parameters()}}


@pytest.mark.parametrize("density", [0.0, 0.02, 0.2, 0.7, 1.0])
def test_sparse_step_equals_the_dense_step(density, monkeypatch):
    sae, x = sae_at_density(density), inputs()
    dense = step(sae, x, "dense", monkeypatch)
    sparse = step(sae, x, "sparse", monkeypatch)
    measured = float((dense["feature_acts"] > 0).float().mean())
    assert abs(measured - density) < 0.02
    assert dense.keys() == sparse.keys() and len(dense) == 10  # 5 values, fired, 4 gradients
    for name in dense:
        torch.testing.assert_close(sparse[name], dense[name], rtol=1e-5, atol=1e-5, msg=name)
    assert all(torch.isfinite(value).all() for value in sparse.values())


def test_every_gradient_of_the_node_equals_autograd_through_the_dense_chain():
    """Also a direct gradient of `acts` (no training loss reads it, a user loss may)."""
    sae, x = sae_at_density(0.1), inputs()
    weights = [sae.W_enc_blocks, sae.b_enc, sae.W_dec_blocks]
    weights_dense = [w.detach().clone().requires_grad_() for w in weights]
    x_sparse, x_dense = x.clone().requires_grad_(), x.clone().requires_grad_()
    probes = [
        torch.randn(shape, generator=torch.Generator().manual_seed(i))
        for i, shape in enumerate([(BATCH, D_SAE), (BATCH, D_IN), (D_SAE,)])
    ]

    def loss(outputs):
        return sum((output * probe).sum() for output, probe in zip(outputs, probes, strict=True))

    pre = block_diagonal_matmul(x_sparse, weights[0]) + weights[1]
    loss(sparse_relu_decode(pre, x_sparse, *weights)).backward()
    pre_dense = block_diagonal_matmul(x_dense, weights_dense[0]) + weights_dense[1]
    loss(relu_decode(pre_dense, weights_dense[2])).backward()
    for ours, reference in zip([x_sparse, *weights], [x_dense, *weights_dense], strict=True):
        torch.testing.assert_close(ours.grad, reference.grad, rtol=1e-5, atol=1e-5)


def test_the_path_chooser_takes_sparse_at_low_density_and_dense_at_high():
    low, high = sae_at_density(0.01), sae_at_density(0.6)
    x = inputs()
    for sae, expected in ((low, True), (high, False)):
        pre = block_diagonal_matmul(x, sae.W_enc_blocks) + sae.b_enc
        assert sparse_pays(pre.detach(), D_SAE) is expected
        assert sparse_pays(pre.detach().double(), D_SAE) is expected
        assert not sparse_pays(pre.detach().bfloat16(), D_SAE)  # no CSR kernels in bf16 on CPU
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not sparse_pays(pre.detach(), D_SAE)


def test_the_sparse_path_runs_in_training_and_makes_no_batch_by_d_sae_gradient(monkeypatch):
    sae, x = sae_at_density(0.02), inputs()
    monkeypatch.setattr(sparse_relu, "SPARSE_MAX_DENSITY", 1.0)
    loss = sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients={"l1": 0.7},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        )
    ).loss
    with torch.profiler.profile(profile_memory=True) as profile:
        loss.backward()
    big = BATCH * D_SAE * x.element_size()
    assert not [
        e.name
        for e in profile.events()
        if e.cpu_memory_usage >= big and e.name.startswith("aten::")
    ]
    assert any(e.name == "aten::_sparse_csr_mm" or "sparse" in e.name for e in profile.events())


def test_non_finite_acts_on_the_sparse_path_are_named_by_the_divergence_check(monkeypatch):
    monkeypatch.setattr(sparse_relu, "SPARSE_MAX_DENSITY", 1.0)
    calls = spy_on_the_sparse_path(monkeypatch)
    sae = sae_at_density(0.02)
    batches = iter([inputs(1), inputs(2).index_fill(0, torch.tensor([5]), float("nan")), inputs(3)])
    cfg = SAETrainerConfig(
        total_training_samples=3 * BATCH,
        train_batch_size_samples=BATCH,
        lr_end=3e-4,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = DivergenceCheckedTrainer.watch(SAETrainer(cfg, sae, batches))
    with pytest.raises(TrainingDiverged) as diverged:
        trainer.fit()
    assert re.match(
        r"training diverged in step 2: loss nan \(mse_loss, l1_loss not finite\); .*W_enc_blocks "
        r"\[3, 8, 32\] holds \d+ NaN.*; last finite loss \S+ in step 1",
        str(diverged.value),
    )
    assert len(calls) == 2
