"""Dead-feature resampling: dead features move onto the reconstruction error of their own
head (the whole input for a dense SAE), sized like the live ones, with fresh Adam moments;
live features and their moments stay bit for bit; the schedule and what was done land in
the SAE's metadata, in one-SAE and one-pass runs alike."""

import pytest
import torch
from sae_lens import SAE, TopKTrainingSAE, TopKTrainingSAEConfig

from sae_lens_attn.architectures.block_diagonal import (
    BlockDiagonalTrainingSAE,
    BlockDiagonalTrainingSAEConfig,
)
from sae_lens_attn.cli import main
from sae_lens_attn.training import train_hook_z_sae
from sae_lens_attn.training.multi_training import HookZSAESpec, train_hook_z_saes
from sae_lens_attn.training.resampling import (
    DeadResampling,
    resample_dead_features,
    unsupported_reason,
)
from tests.test_training_cli import REDUCED, tiny_embedded  # noqa: F401 (a fixture)

N_HEADS, D_HEAD, PER_HEAD = 4, 8, 16


def block_sae() -> BlockDiagonalTrainingSAE:
    torch.manual_seed(0)
    cfg = BlockDiagonalTrainingSAEConfig(
        d_in=N_HEADS * D_HEAD, d_sae=N_HEADS * PER_HEAD, n_heads=N_HEADS, activation="topk", k=2
    )
    return BlockDiagonalTrainingSAE(cfg)


def adam_after_one_step(sae: torch.nn.Module, batch: torch.Tensor) -> torch.optim.Adam:
    """An Adam optimizer over `sae` with non-zero moments everywhere that had a gradient."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    (sae(batch) - batch).square().sum().backward()
    for param in sae.parameters():  # every entry gets a moment, even a silent feature's
        if param.grad is not None:
            param.grad.add_(1e-3)
    optimizer.step()
    return optimizer


def error_directions(sae, batch: torch.Tensor, groups: int) -> torch.Tensor:
    """`[groups, batch, w]` unit directions of the reconstruction error, by a plain forward."""
    with torch.no_grad():
        error = (batch - sae(batch)).reshape(len(batch), groups, -1).transpose(0, 1)
    return torch.nn.functional.normalize(error, dim=-1)


@pytest.mark.parametrize("make", ["block", "dense"])
def test_dead_features_move_onto_their_own_head_s_error_and_nothing_else_changes(make):
    sae = block_sae() if make == "block" else TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=N_HEADS * D_HEAD, d_sae=N_HEADS * PER_HEAD, k=4)
    )
    groups = N_HEADS if make == "block" else 1
    batch = torch.randn(64, N_HEADS * D_HEAD, generator=torch.Generator().manual_seed(1))
    optimizer = adam_after_one_step(sae, batch)
    dead = torch.zeros(N_HEADS * PER_HEAD, dtype=torch.bool)
    dead[[0, 5, 17, 18, 50]] = True
    before = {name: p.detach().clone() for name, p in sae.named_parameters()}
    moments = {name: optimizer.state[p]["exp_avg_sq"].clone() for name, p in sae.named_parameters()}
    directions = error_directions(sae, batch, groups)

    moved = resample_dead_features(sae, optimizer, dead, batch, torch.Generator().manual_seed(0))

    assert moved == 5
    per_group = N_HEADS * PER_HEAD // groups
    if make == "block":
        decoder, encoder = sae.W_dec_blocks.detach(), sae.W_enc_blocks.detach()
        dec_before, enc_before = before["W_dec_blocks"], before["W_enc_blocks"]
    else:
        decoder, encoder = sae.W_dec.detach().unsqueeze(0), sae.W_enc.detach().unsqueeze(0)
        dec_before, enc_before = before["W_dec"].unsqueeze(0), before["W_enc"].unsqueeze(0)
    for feature in range(N_HEADS * PER_HEAD):
        group, row = divmod(feature, per_group)
        if not dead[feature]:
            assert torch.equal(decoder[group, row], dec_before[group, row])
            assert torch.equal(encoder[group, :, row], enc_before[group, :, row])
            assert sae.b_enc[feature] == before["b_enc"][feature]
            continue
        live = ~dead.view(groups, per_group)[group]
        unit = decoder[group, row] / decoder[group, row].norm()
        assert (directions[group] @ unit).max() > 1 - 1e-5  # one token's error, this head's
        assert torch.allclose(encoder[group, :, row] / encoder[group, :, row].norm(), unit, atol=1e-6)
        assert decoder[group, row].norm() == pytest.approx(float(dec_before[group][live].norm(dim=-1).mean()), rel=1e-5)
        assert encoder[group, :, row].norm() == pytest.approx(float(enc_before[group][:, live].norm(dim=0).mean()), rel=1e-5)
        group_bias = before["b_enc"][group * per_group : (group + 1) * per_group]
        assert float(sae.b_enc[feature].detach()) == pytest.approx(float(group_bias[live].mean()), abs=1e-7)
    for name, param in sae.named_parameters():
        moment = optimizer.state[param]["exp_avg_sq"]
        if name in ("W_dec_blocks", "W_dec"):
            rows = moment.reshape(-1, moment.shape[-1])[dead]
            kept = moment.reshape(-1, moment.shape[-1])[~dead]
            old_kept = moments[name].reshape(-1, moment.shape[-1])[~dead]
        elif name in ("W_enc_blocks", "W_enc"):
            flat = moment.transpose(-1, -2).reshape(-1, moment.shape[-2])
            rows, kept = flat[dead], flat[~dead]
            old_kept = moments[name].transpose(-1, -2).reshape(-1, moment.shape[-2])[~dead]
        elif name == "b_enc":
            rows, kept, old_kept = moment[dead], moment[~dead], moments[name][~dead]
        else:
            assert torch.equal(moment, moments[name])
            continue
        assert torch.equal(rows, torch.zeros_like(rows)) and torch.equal(kept, old_kept)
        assert bool((old_kept != 0).any())


def test_nothing_dead_changes_nothing():
    sae = block_sae()
    batch = torch.randn(16, N_HEADS * D_HEAD)
    optimizer = adam_after_one_step(sae, batch)
    before = [p.detach().clone() for p in sae.parameters()]
    assert resample_dead_features(sae, optimizer, torch.zeros(N_HEADS * PER_HEAD, dtype=torch.bool), batch) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, sae.parameters(), strict=True))


def test_the_schedule_counts_whole_steps_and_stops_at_four_fifths():
    schedule = DeadResampling.for_run(16_384, 4096, 102_400)  # 25 steps
    assert (schedule.every_steps, schedule.last_step) == (4, 20)
    assert [step for step in range(1, 26) if schedule.due(step)] == [4, 8, 12, 16, 20]
    assert DeadResampling.for_run(1000, 4096, 409_600).every_steps == 1  # rounded up
    with pytest.raises(ValueError, match="positive token interval"):
        DeadResampling.for_run(0, 4096, 102_400)


def test_a_run_records_each_resampling_in_the_sae_s_metadata(tiny_model, tmp_path):
    tokens = torch.randint(0, 101, (64, 32), generator=torch.Generator().manual_seed(1))
    train_hook_z_sae(
        tiny_model, 1, dataset=tokens, training_tokens=1024, train_batch_size_tokens=128,
        store_batch_size_prompts=4, expansion_factor=8, output_path=tmp_path / "one",
        sae_kwargs={"activation": "topk", "k": 1}, resample_every_tokens=256,
        runner_kwargs={"dead_feature_window": 1},
    )
    trained = train_hook_z_saes(
        tiny_model, [HookZSAESpec(1, None, "block_diagonal", {"activation": "topk", "k": 1}, 8, name="a")],
        dataset=tokens, training_tokens=1024, train_batch_size_tokens=128, store_batch_size_prompts=4,
        output_path=tmp_path / "many", resample_every_tokens=256, runner_kwargs={"dead_feature_window": 1},
    )
    for sae in (SAE.load_from_disk(tmp_path / "one"), SAE.load_from_disk(tmp_path / "many" / "a")):
        record = sae.cfg.metadata["resampling"]
        assert (record["every_steps"], record["last_step"]) == (2, 6)  # 8 steps of 128 tokens
        assert [step for step, _ in record["resampled"]] == [2, 4, 6]
        assert sum(moved for _, moved in record["resampled"]) > 0  # k 1 of 128 per head leaves many silent
    assert "resampling" in trained["a"][0].cfg.metadata


@pytest.mark.usefixtures("tiny_embedded")
def test_train_resamples_by_default_and_says_what_it_moved(tmp_path, capsys):
    assert main(["train", "--layer", "1", *REDUCED, "--k", "1", "--expansion-factor", "8", "--no-silent-bias-lift",
                 "--dead-window-tokens", "128", "--resample-dead-tokens", "256", "--out", str(tmp_path / "on")]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("dead-feature resampling"))
    assert line.startswith("dead-feature resampling every 2 steps to step 12: moved ")
    assert " of 6 resamplings (most at once: " in line
    assert main(["train", "--layer", "1", *REDUCED, "--out", str(tmp_path / "default")]) == 0
    record = SAE.load_from_disk(tmp_path / "default").cfg.metadata["resampling"]
    assert record["every_steps"] == 128  # the default: the dead window, 16,384 tokens at batch 128
    assert main(["train", "--layer", "1", *REDUCED, "--resample-dead-tokens", "0", "--out", str(tmp_path / "off")]) == 0
    assert "resampling" not in SAE.load_from_disk(tmp_path / "off").cfg.metadata.to_dict()


@pytest.mark.usefixtures("tiny_embedded")
def test_resampling_asked_for_under_torchrun_exits_2_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["train", "--layer", "1", *REDUCED, "--resample-dead-tokens", "256", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --resample-dead-tokens and --silent-bias-lift run on one process")
    assert not (tmp_path / "out").exists()


def test_saes_without_an_encoder_and_b_enc_are_named_and_refused():
    from sae_lens import GatedTrainingSAE, GatedTrainingSAEConfig

    gated = GatedTrainingSAE(GatedTrainingSAEConfig(d_in=8, d_sae=16))
    assert unsupported_reason(gated) == "GatedTrainingSAE has no trainable encoder weight and b_enc to move"
    assert unsupported_reason(block_sae()) is None
    with pytest.raises(ValueError, match="GatedTrainingSAE has no trainable encoder"):
        resample_dead_features(gated, torch.optim.Adam(gated.parameters()), torch.ones(16, dtype=torch.bool),
                               torch.randn(4, 8))


@pytest.mark.usefixtures("tiny_embedded")
def test_train_says_when_an_architecture_cannot_resample(tmp_path, capsys):
    assert main(["train", "--layer", "1", *REDUCED, "--architecture", "gated", "--out", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    assert "dead-feature resampling skipped: GatedTrainingSAE has no trainable encoder" in out
    assert "silent-feature" not in out  # the bias lift is for per-head TopK SAEs: no news by default
