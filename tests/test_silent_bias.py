"""The silent-feature bias lift: after a step, each feature silent on the batch has its
b_enc raised by the lift times its own head's pre-activation spread (the whole input for a
dense SAE), nothing else moves; the spread is the pre-activations' standard deviation for
random directions; runs record it, `train` does it by default and says so, and it keeps
features alive that a run without it loses."""

import pytest
import torch
from sae_lens import SAE, TopKTrainingSAE, TopKTrainingSAEConfig

from sae_lens_attn.attribution.firing import count_firings
from sae_lens_attn.cli import main
from sae_lens_attn.dead import SILENT_BIAS_LIFT
from sae_lens_attn.training import train_hook_z_sae
from sae_lens_attn.training.multi_training import HookZSAESpec, train_hook_z_saes
from sae_lens_attn.training.silent_bias import lift_silent_biases, pre_activation_spread
from tests.test_resampling import D_HEAD, N_HEADS, PER_HEAD, block_sae
from tests.test_training_cli import REDUCED, tiny_embedded  # noqa: F401 (a fixture)


def spread_by_hand(encoder_columns: list[torch.Tensor], inputs: list[torch.Tensor]) -> list[float]:
    """Per group: sqrt(mean_t ||x_t||^2 * mean_f ||w_f||^2 / width), term by term."""
    spreads = []
    for columns, x in zip(encoder_columns, inputs, strict=True):  # columns [w, m], x [batch, w]
        width = x.shape[1]
        input_power = sum(float(row @ row) for row in x) / len(x)
        encoder_power = sum(float(col @ col) for col in columns.T) / columns.shape[1]
        spreads.append((input_power * encoder_power / width) ** 0.5)
    return spreads


@pytest.mark.parametrize("make", ["block", "dense"])
def test_silent_features_rise_by_the_lift_times_their_head_s_spread_and_nothing_else_moves(make):
    sae = block_sae() if make == "block" else TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=N_HEADS * D_HEAD, d_sae=N_HEADS * PER_HEAD, k=4)
    )
    with torch.no_grad():
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(2))
    groups = N_HEADS if make == "block" else 1
    batch = torch.randn(64, N_HEADS * D_HEAD, generator=torch.Generator().manual_seed(1))
    batch[:, :D_HEAD] *= 5  # head 0 four times louder than the rest: its own, larger step
    silent = torch.zeros(N_HEADS * PER_HEAD, dtype=torch.bool)
    silent[[0, 5, 17, 18, 50]] = True
    before = {name: p.detach().clone() for name, p in sae.named_parameters()}
    width = N_HEADS * D_HEAD // groups
    centred = batch - before["b_dec"]
    if make == "block":
        columns = list(sae.W_enc_blocks.detach())
    else:
        columns = [sae.W_enc.detach()]
    expected = spread_by_hand(columns, [centred[:, g * width : (g + 1) * width] for g in range(groups)])

    assert lift_silent_biases(sae, silent, batch, 0.4) == 5

    per_group = N_HEADS * PER_HEAD // groups
    for feature in range(N_HEADS * PER_HEAD):
        step = 0.4 * expected[feature // per_group] if silent[feature] else 0.0
        assert float(sae.b_enc[feature]) == pytest.approx(float(before["b_enc"][feature]) + step, rel=1e-5, abs=1e-7)
    for name, param in sae.named_parameters():
        if name != "b_enc":
            assert torch.equal(param.detach(), before[name])
    if make == "block":
        assert expected[0] > 3 * max(expected[1:])


def test_the_spread_is_the_standard_deviation_of_random_pre_activations():
    sae = block_sae()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        sae.W_enc_blocks.normal_(generator=generator).mul_(torch.tensor([0.1, 0.5, 1.0, 2.0]).view(-1, 1, 1))
        sae.b_dec.zero_()
    batch = torch.randn(20_000, N_HEADS * D_HEAD, generator=generator)
    pre = torch.einsum("bhd,hdm->bhm", batch.view(-1, N_HEADS, D_HEAD), sae.W_enc_blocks.detach())
    measured = pre.std(dim=(0, 2))
    assert torch.allclose(pre_activation_spread(sae, batch), measured, rtol=0.05)


def test_runs_lift_per_head_topk_saes_record_it_and_skip_the_rest(tiny_model, tmp_path):
    tokens = torch.randint(0, 101, (64, 32), generator=torch.Generator().manual_seed(1))
    run = dict(dataset=tokens, training_tokens=1024, train_batch_size_tokens=128, store_batch_size_prompts=4)
    train_hook_z_sae(tiny_model, 1, expansion_factor=8, output_path=tmp_path / "one",
                     sae_kwargs={"activation": "topk", "k": 1}, silent_bias_lift=0.4, **run)
    specs = [HookZSAESpec(1, None, "block_diagonal", {"activation": "topk", "k": 1}, 8, name="a"),
             HookZSAESpec(1, None, "topk", {"k": 4}, 8, name="dense"),
             HookZSAESpec(1, None, "block_diagonal", {"activation": "relu"}, 8, name="relu")]
    train_hook_z_saes(tiny_model, specs, output_path=tmp_path / "many", silent_bias_lift=0.4, **run)
    for sae in (SAE.load_from_disk(tmp_path / "one"), SAE.load_from_disk(tmp_path / "many" / "a")):
        record = sae.cfg.metadata["silent_bias_lift"]
        assert record["lift"] == 0.4
        assert 0 < record["lifted"] <= 8 * sae.cfg.d_sae  # 8 steps, each feature at most once a step
        assert "resampling" not in sae.cfg.metadata.to_dict()
    for name, kind in (("dense", "TopKTrainingSAE"), ("relu", "BlockDiagonalTrainingSAE")):
        record = SAE.load_from_disk(tmp_path / "many" / name).cfg.metadata["silent_bias_lift"]
        assert record == {"skipped": f"{kind} is not a per-head TopK SAE (block_diagonal with activation topk), "
                                     "the only kind it is measured to help"}


def test_the_lift_keeps_alive_features_that_a_run_without_it_loses(tiny_model, tmp_path):
    tokens = torch.randint(0, 101, (256, 32), generator=torch.Generator().manual_seed(1))
    held_out = torch.randint(0, 101, (64, 32), generator=torch.Generator().manual_seed(2))
    dead = {}
    for lift in (None, SILENT_BIAS_LIFT):
        sae, layout = train_hook_z_sae(
            tiny_model, 1, dataset=tokens, training_tokens=8192, train_batch_size_tokens=256,
            store_batch_size_prompts=8, expansion_factor=4, lr=1e-2, sae_kwargs={"activation": "topk", "k": 1},
            silent_bias_lift=lift,
        )
        dead[lift] = int(count_firings(tiny_model, sae, layout, held_out, min_tokens=1).mask.sum())
    # measured: 206 and 28 of 256 features (one per head of 64 wins each token)
    assert dead[None] >= 100 and dead[SILENT_BIAS_LIFT] <= dead[None] // 4, dead


@pytest.mark.usefixtures("tiny_embedded")
def test_train_lifts_by_default_and_says_so(tmp_path, capsys):
    assert main(["train", "--layer", "1", *REDUCED, "--out", str(tmp_path / "default")]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("silent-feature"))
    assert line.startswith(f"silent-feature bias lift {SILENT_BIAS_LIFT:g} x the head's pre-activation spread: ")
    metadata = SAE.load_from_disk(tmp_path / "default").cfg.metadata.to_dict()
    assert metadata["silent_bias_lift"]["lift"] == SILENT_BIAS_LIFT
    assert main(["train", "--layer", "1", *REDUCED, "--silent-bias-lift", "0", "--out", str(tmp_path / "off")]) == 0
    assert "silent_bias_lift" not in SAE.load_from_disk(tmp_path / "off").cfg.metadata.to_dict()
    assert "silent-feature" not in capsys.readouterr().out
    assert main(["train", "--layer", "1", *REDUCED, "--architecture", "topk", "--k", "4", "--silent-bias-lift", "0.4",
                 "--out", str(tmp_path / "dense")]) == 0
    assert "silent-feature bias lift skipped: TopKTrainingSAE is not a per-head TopK SAE" in capsys.readouterr().out


@pytest.mark.usefixtures("tiny_embedded")
@pytest.mark.parametrize("value", ["-0.1", "nan", "x"])
def test_a_bad_lift_exits_2_before_training(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--layer", "1", *REDUCED, "--silent-bias-lift", value, "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: argument --silent-bias-lift: '{value}' ") and line.endswith("--help`)")
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("tiny_embedded")
def test_the_lift_asked_for_under_torchrun_exits_2_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["train", "--layer", "1", *REDUCED, "--silent-bias-lift", "0.4", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --resample-dead-tokens and --silent-bias-lift run on one process")
    assert not (tmp_path / "out").exists()
