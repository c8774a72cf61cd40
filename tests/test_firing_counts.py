"""Our trainer's firing bookkeeping against SAELens's `SAETrainer._train_step`.

`DivergenceCheckedTrainer._train_step` is SAELens's step with the firing counts taken by
`token_firing_counts`. These tests pin it to SAELens's own method: twin SAEs trained step
by step, one by each, must stay bit-identical (weights, optimizer state, every counter),
so a change in SAELens's step shows up here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from sae_lens import LoggingConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from sae_lens_attn import BlockDiagonalTrainingSAE, BlockDiagonalTrainingSAEConfig
from sae_lens_attn.training.firing_counts import token_firing_counts
from sae_lens_attn.training.trainer import DivergenceCheckedTrainer

N_HEADS, D_HEAD, PER_HEAD, BATCH, STEPS = 3, 8, 16, 96, 5
D_IN, D_SAE = N_HEADS * D_HEAD, N_HEADS * PER_HEAD


def saelens_counts(feature_acts: torch.Tensor) -> torch.Tensor:
    """SAELens's trainer's own expression."""
    counts = feature_acts.bool().float().sum(0)
    return counts.to_dense() if counts.is_sparse else counts


def test_dense_counts_equal_saelens_with_zeros_negatives_nan_and_negative_zero():
    acts = torch.randn(64, 40, generator=torch.Generator().manual_seed(0)).relu() - 0.3
    acts[acts.abs() < 0.2] = 0.0
    acts[3, 5], acts[7, 6], acts[8, 9] = float("nan"), -0.0, float("-inf")
    counts = token_firing_counts(acts)
    assert counts is not None and counts.dtype == torch.float32
    assert torch.equal(counts, saelens_counts(acts))
    assert 0 < int(counts.sum()) < acts.numel()


def test_sparse_counts_equal_saelens_on_an_uncoalesced_tensor_with_duplicates_and_zeros():
    # (1, 2) stored twice with values summing to 0, (0, 3) stored as an explicit zero
    indices = torch.tensor([[1, 1, 0, 2, 0, 2], [2, 2, 3, 0, 1, 2]])
    values = torch.tensor([1.5, -1.5, 0.0, 2.0, 0.5, -1.0])
    acts = torch.sparse_coo_tensor(indices, values, (3, 5), check_invariants=True)
    assert not acts.is_coalesced()
    counts = token_firing_counts(acts)
    assert counts is not None
    assert counts.tolist() == saelens_counts(acts).tolist() == [1.0, 1.0, 3.0, 0.0, 0.0]


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_other_shapes_and_layouts_are_left_to_saelens():
    assert token_firing_counts(torch.ones(2, 3, 4)) is None
    assert token_firing_counts(torch.eye(3).to_sparse_csr()) is None


def block_diagonal(activation: str) -> BlockDiagonalTrainingSAE:
    kwargs = {"activation": "topk", "k": 3} if activation == "topk" else {"l1_coefficient": 0.5}
    return BlockDiagonalTrainingSAE(
        BlockDiagonalTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS, **kwargs)
    )


SAES: dict[str, Callable[[], torch.nn.Module]] = {
    # sparse COO feature acts (per-head TopK), with the per-head auxiliary loss
    "block_diagonal topk": lambda: block_diagonal("topk"),
    "block_diagonal relu": lambda: block_diagonal("relu"),  # dense, with the L1 term
    "saelens topk": lambda: TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4)),
    # sparse COO acts from SAELens's own TopK; not with its default
    # `rescale_acts_by_decoder_norm=True`, whose backward calls `view` on a sparse tensor
    # and fails with either trainer (sae_lens 6.54, torch 2.14, CPU)
    "saelens topk sparse": lambda: TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=D_IN,
            d_sae=D_SAE,
            k=4,
            use_sparse_activations=True,
            rescale_acts_by_decoder_norm=False,
        )
    ),
    "saelens standard": lambda: StandardTrainingSAE(
        StandardTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, l1_coefficient=0.5)
    ),
}


def batches(seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # few directions, so that some features stop firing and the dead mask is used
    basis = torch.randn(4, D_IN, generator=generator)
    return [torch.randn(BATCH, 4, generator=generator) @ basis for _ in range(STEPS)]


def trainer_for(sae: torch.nn.Module) -> SAETrainer:
    cfg = SAETrainerConfig(
        total_training_samples=STEPS * BATCH,
        train_batch_size_samples=BATCH,
        lr=1e-2,
        lr_end=1e-2,
        dead_feature_window=0,  # dead after one silent step: the auxiliary losses run
        logger=LoggingConfig(log_to_wandb=False),
    )
    return SAETrainer(cfg, sae, iter([]))  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:Sparse invariant checks are implicitly disabled")  # SAELens's
@pytest.mark.parametrize("name", list(SAES))
def test_our_step_keeps_saelens_state_bit_identical(name: str):
    torch.manual_seed(0)
    sae = SAES[name]()
    theirs = trainer_for(sae)
    ours = DivergenceCheckedTrainer.watch(trainer_for(copy.deepcopy(sae)))
    assert type(ours)._train_step is not SAETrainer._train_step
    for step, batch in enumerate(batches(seed=1)):
        expected = theirs.step(batch)  # SAELens's `_train_step`
        got = ours.step(batch)
        theirs.n_training_steps += 1
        ours.n_training_steps += 1
        assert torch.equal(got.loss, expected.loss), (name, step)
        assert torch.equal(ours.act_freq_scores, theirs.act_freq_scores), (name, step)
        assert torch.equal(ours.n_forward_passes_since_fired, theirs.n_forward_passes_since_fired)
        assert ours.n_frac_active_samples == theirs.n_frac_active_samples
        for (key, mine), (_, reference) in zip(
            ours.sae.state_dict().items(), theirs.sae.state_dict().items(), strict=True
        ):
            assert torch.equal(mine, reference), (name, step, key)
    if "topk" in name:  # the auxiliary loss for dead features ran
        assert bool(theirs.dead_neurons.any()), "the dead mask was never exercised"
    assert 0 < int((theirs.act_freq_scores > 0).sum()) <= D_SAE
    mine, reference = ours.optimizer.state_dict()["state"], theirs.optimizer.state_dict()["state"]
    assert mine.keys() == reference.keys() and mine
    for index, moments in reference.items():
        for key, value in moments.items():
            assert torch.equal(torch.as_tensor(mine[index][key]), torch.as_tensor(value)), key


@pytest.mark.parametrize("columns", [48, 45])  # eight columns per word, and a remainder
def test_dense_counts_are_exact_across_word_chunks(columns: int):
    """More than 255 rows (several chunks of word sums), a column that fires on every
    token (255 per chunk: a byte at its limit) and one that never fires."""
    generator = torch.Generator().manual_seed(3)
    acts = (torch.rand(700, columns, generator=generator) < 0.3).float()
    acts[:, 0], acts[:, -1] = 1.0, 0.0
    counts = token_firing_counts(acts)
    assert counts is not None
    assert torch.equal(counts, saelens_counts(acts))
    assert counts[0] == 700 and counts[-1] == 0
