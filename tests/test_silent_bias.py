"""The silent-feature bias lift: after a step, each feature of a per-head TopK SAE silent
on the batch has its b_enc raised just enough to win a slot in its head on one token of
that batch, and nothing else moves; the firing thresholds match a plain top-k; runs record
it, `train` does it by default and says so, and it keeps features alive that a run
without it loses."""

import pytest
import torch
from sae_lens import SAE

from sae_lens_attn.attribution.firing import count_firings
from sae_lens_attn.cli import main
from sae_lens_attn.training import train_hook_z_sae
from sae_lens_attn.training.multi_training import HookZSAESpec, train_hook_z_saes
from sae_lens_attn.training.silent_bias import MARGIN, firing_thresholds, lift_silent_biases
from tests.test_resampling import D_HEAD, N_HEADS, PER_HEAD, block_sae
from tests.test_training_cli import REDUCED, tiny_embedded  # noqa: F401 (a fixture)


def fires(sae, batch: torch.Tensor) -> torch.Tensor:
    """`[d_sae]` whether each feature fires on some token of `batch`, by SAELens's encode."""
    with torch.no_grad():
        return (sae.encode(batch) > 0).any(dim=0)


@pytest.mark.parametrize("layout", ["dense", "sparse", "sparse with the selected zeros stored"])
def test_the_thresholds_are_each_head_s_smallest_winner_or_zero(layout):
    generator = torch.Generator().manual_seed(4)
    pre = torch.randn(32, N_HEADS, PER_HEAD, generator=generator)
    pre[0, 1] = -1.0  # head 1 of token 0: nothing positive, so any positive pre-activation wins
    pre[0, 1, 3] = 0.5  # ... and one feature fired, fewer than k
    top = pre.topk(2, dim=-1)
    acts = torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu()).view(32, -1)
    expected = torch.where((acts.view(32, N_HEADS, -1) > 0).sum(-1) >= 2, top.values[..., 1], torch.zeros(()))
    if layout == "sparse":
        acts = acts.to_sparse()
    elif layout != "dense":  # as the per-head TopK training pass writes them: k entries per token and head
        features = top.indices + torch.arange(N_HEADS).view(-1, 1) * PER_HEAD
        tokens = torch.arange(32).repeat_interleave(N_HEADS * 2)
        acts = torch.sparse_coo_tensor(torch.stack([tokens, features.reshape(-1)]), top.values.relu().reshape(-1),
                                       (32, N_HEADS * PER_HEAD))
    thresholds = firing_thresholds(acts, N_HEADS, 2)
    assert torch.equal(thresholds, expected)
    assert thresholds[0, 1] == 0


def test_each_silent_feature_rises_just_enough_to_win_a_slot_and_nothing_else_moves():
    sae = block_sae()  # k 2 per head of 16
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        sae.b_dec.normal_(generator=generator)
        sae.b_enc.normal_(generator=generator).mul_(0.1)
    batch = torch.randn(64, N_HEADS * D_HEAD, generator=generator)
    with torch.no_grad():
        sae.b_enc[[0, 20, 37, 55]] -= 50  # one feature per head that never fires
        acts = sae.encode(batch)
    silent = torch.zeros(N_HEADS * PER_HEAD, dtype=torch.bool)
    silent[[0, 20, 37, 55]] = True
    assert not fires(sae, batch)[silent].any()
    before = {name: p.detach().clone() for name, p in sae.named_parameters()}

    assert lift_silent_biases(sae, silent, batch, acts) == 4

    assert fires(sae, batch)[silent].all()  # each lifted feature now wins a slot on some token
    for name, param in sae.named_parameters():
        if name != "b_enc":
            assert torch.equal(param.detach(), before[name])
    assert torch.equal(sae.b_enc.detach()[~silent], before["b_enc"][~silent])
    thresholds = firing_thresholds(acts, N_HEADS, 2)
    with torch.no_grad():  # no more than needed: without the margin's worth (and a hair) it stays silent
        for feature in silent.nonzero().flatten().tolist():
            margin = MARGIN * float(thresholds[:, feature // PER_HEAD].mean())
            sae.b_enc[feature] -= 1.01 * margin
            assert not fires(sae, batch)[feature]
            sae.b_enc[feature] += 1.01 * margin


def test_runs_lift_per_head_topk_saes_record_it_and_skip_the_rest(tiny_model, tmp_path):
    tokens = torch.randint(0, 101, (64, 32), generator=torch.Generator().manual_seed(1))
    run = dict(dataset=tokens, training_tokens=1024, train_batch_size_tokens=128, store_batch_size_prompts=4)
    train_hook_z_sae(tiny_model, 1, expansion_factor=8, output_path=tmp_path / "one",
                     sae_kwargs={"activation": "topk", "k": 1}, silent_bias_lift=True, **run)
    specs = [HookZSAESpec(1, None, "block_diagonal", {"activation": "topk", "k": 1}, 8, name="a"),
             HookZSAESpec(1, None, "topk", {"k": 4}, 8, name="dense"),
             HookZSAESpec(1, None, "block_diagonal", {"activation": "relu"}, 8, name="relu")]
    train_hook_z_saes(tiny_model, specs, output_path=tmp_path / "many", silent_bias_lift=True, **run)
    for sae in (SAE.load_from_disk(tmp_path / "one"), SAE.load_from_disk(tmp_path / "many" / "a")):
        record = sae.cfg.metadata["silent_bias_lift"]
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
    for lift in (False, True):
        sae, layout = train_hook_z_sae(
            tiny_model, 1, dataset=tokens, training_tokens=8192, train_batch_size_tokens=256,
            store_batch_size_prompts=8, expansion_factor=4, lr=1e-2, sae_kwargs={"activation": "topk", "k": 1},
            silent_bias_lift=lift,
        )
        dead[lift] = int(count_firings(tiny_model, sae, layout, held_out, min_tokens=1).mask.sum())
    # measured: 206 and 41 of 256 features (one per head of 64 wins each token), the same at
    # 1 and 2 threads; 200-205 and 32-37 with the data and seeds 3-5
    assert dead[False] >= 100 and dead[True] <= dead[False] // 3, dead


@pytest.mark.usefixtures("tiny_embedded")
def test_train_lifts_by_default_and_says_so(tmp_path, capsys):
    assert main(["train", "--layer", "1", *REDUCED, "--out", str(tmp_path / "default")]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("silent-feature"))
    assert line.startswith("silent-feature bias lift to the edge of firing: ")
    metadata = SAE.load_from_disk(tmp_path / "default").cfg.metadata.to_dict()
    assert metadata["silent_bias_lift"]["lifted"] > 0
    assert main(["train", "--layer", "1", *REDUCED, "--no-silent-bias-lift", "--out", str(tmp_path / "off")]) == 0
    assert "silent_bias_lift" not in SAE.load_from_disk(tmp_path / "off").cfg.metadata.to_dict()
    assert "silent-feature" not in capsys.readouterr().out
    assert main(["train", "--layer", "1", *REDUCED, "--architecture", "topk", "--k", "4", "--silent-bias-lift",
                 "--out", str(tmp_path / "dense")]) == 0
    assert "silent-feature bias lift skipped: TopKTrainingSAE is not a per-head TopK SAE" in capsys.readouterr().out


@pytest.mark.usefixtures("tiny_embedded")
def test_the_lift_asked_for_under_torchrun_exits_2_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["train", "--layer", "1", *REDUCED, "--silent-bias-lift", "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --resample-dead-tokens and --silent-bias-lift run on one process")
    assert not (tmp_path / "out").exists()
