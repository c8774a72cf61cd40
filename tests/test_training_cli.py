"""`sae-lens-attn train` end to end, on a tiny model standing in for the embedded one."""

import json
import re
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from sae_lens import SAE

import sae_lens_attn.commands.train as train_command
import sae_lens_attn.models
from sae_lens_attn.cli import build_parser, main
from sae_lens_attn.commands._common import load_sae, resolve_sae_folder
from sae_lens_attn.errors import InvalidInputError
from sae_lens_attn.sources.head_layout import HeadLayout

REDUCED = ["--training-tokens", "2048", "--context-size", "16", "--batch-size", "128", "--expansion-factor", "2",
           "--dead-tokens", "2048"]


@pytest.fixture
def tiny_embedded(monkeypatch, tiny_model):
    """`--model embedded` -> the tiny model; its corpus -> random token rows per split."""
    monkeypatch.setattr(train_command, "load_model", lambda name: tiny_model)
    calls = []

    def corpus_dataset(context_size, n_sequences=None, split="train"):
        calls.append(split)
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        rows = torch.randint(0, 101, (n_sequences or 200, context_size), generator=generator)
        return Dataset.from_dict({"input_ids": rows.tolist()})

    monkeypatch.setattr(sae_lens_attn.models, "corpus_dataset", corpus_dataset)
    return calls


def test_train_command_saves_a_block_diagonal_sae_on_chosen_heads(tiny_embedded, tiny_model, tmp_path, capsys):
    out = tmp_path / "sae"
    code = main(["train", "--model", "embedded", "--layer", "1", "--heads", "3,0", "--k", "2",
                 "--per-head-norm", "--out", str(out), *REDUCED])
    assert code == 0
    sae = SAE.load_from_disk(out)
    assert type(sae).__name__ == "BlockDiagonalSAE"
    assert (sae.cfg.activation, sae.cfg.k, sae.cfg.n_heads, sae.cfg.d_sae) == ("topk", 2, 2, 64)
    assert HeadLayout.from_sae(sae, tiny_model) == HeadLayout.for_model(tiny_model, 1, [3, 0])
    assert len(sae.cfg.metadata["per_head_scale_folded"]) == 2
    printed = capsys.readouterr().out
    assert f"saved block_diagonal SAE on blocks.1.attn.hook_z heads [3, 0] (d_in 32, d_sae 64) to {out}" in printed
    assert "SAELens evals on" not in printed  # not for a head subset
    assert "per-head evals on the same prompts (only that head spliced)" in printed  # but per head, yes
    head_evals = json.loads((out / "head_evals.json").read_text())
    assert list(head_evals) == ["L1H3", "L1H0"]
    assert sum(h["features"] for h in head_evals.values()) == 64
    [entry] = json.loads((out / "saes.json").read_text())
    assert entry["metrics"]["L1H3/l0"] == pytest.approx(head_evals["L1H3"]["l0"])
    assert tiny_embedded == ["train", "test"]


def test_train_command_evaluates_an_all_heads_sae_on_held_out_rows(tiny_embedded, tmp_path, capsys):
    assert main(["train", "--layer", "0", "--architecture", "standard", "--l1-coefficient", "2",
                 "--out", str(tmp_path / "sae"), "--eval-batches", "2", *REDUCED]) == 0
    printed = capsys.readouterr().out
    assert "SAELens evals on 2 x 8 held-out prompts:" in printed
    assert "ce_loss_score" in printed and "explained_variance" in printed
    assert tiny_embedded == ["train", "test"]
    assert SAE.load_from_disk(tmp_path / "sae").cfg.metadata.training_architecture_details["l1_coefficient"] == 2.0


def test_train_command_turns_bad_heads_into_an_error_message(tiny_embedded, tmp_path, capsys):
    for argv, message in [
        (["--layer", "1", "--heads", "0,7"], "head index 7 is out of range for layer 1; valid heads are 0..3"),
        (["--model", "gpt2-small", "--layer", "1"], "--model gpt2-small needs --dataset (a Hugging Face dataset path)"),
    ]:
        assert main(["train", *argv, "--out", str(tmp_path), *REDUCED]) == 2
        assert capsys.readouterr().err == f"error: {message}\n"
    assert tiny_embedded == []  # checked before any corpus is tokenized


def test_train_command_trains_layers_by_architectures_from_one_pass_and_lists_them(tiny_embedded, tmp_path, capsys):
    out = tmp_path / "saes"
    assert main(["train", "--layers", "0,1", "--architecture", "block_diagonal,standard", "--out", str(out),
                 "--eval-batches", "1", *REDUCED]) == 0
    entries = json.loads((out / "saes.json").read_text())
    names = ["L0_block_diagonal", "L0_standard", "L1_block_diagonal", "L1_standard"]
    assert [entry["name"] for entry in entries] == names == [entry["path"] for entry in entries]
    for entry in entries:
        sae = SAE.load_from_disk(out / entry["path"])
        assert (sae.cfg.architecture(), sae.cfg.metadata.hook_name) == (
            entry["architecture"], f"blocks.{entry['layer']}.attn.hook_z")
        assert entry["heads"] == [0, 1, 2, 3]
        assert {"training_l0", "dead_eval_tokens", "not_seen_features", "ce_loss_score", "explained_variance"} <= set(entry["metrics"])
        layer = entry["layer"]
        assert {f"L{layer}H{h}/{m}" for h in range(4) for m in ("explained_variance", "ce_loss_recovered", "l0",
                                                                  "dead_share")} <= set(entry["metrics"])
        per_head_l0 = sum(entry["metrics"][f"L{layer}H{h}/l0"] for h in range(4))
        assert per_head_l0 == pytest.approx(entry["metrics"]["l0"], rel=1e-4)  # heads add up to SAELens's L0
        assert (out / entry["path"] / "head_evals.json").is_file()
    printed = capsys.readouterr().out
    assert printed.count("SAELens evals on 1 x 8 held-out prompts") == 4
    assert f"listed 4 SAEs in {out / 'saes.json'}" in printed
    assert tiny_embedded == ["train", "test"]  # each split tokenized once


def test_sparsity_sweeps_train_one_sae_per_value_and_head_subsets_say_why_evals_are_skipped(tiny_embedded, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["train", "--layer", "1", "--heads", "2,0", "--architecture", "standard,topk",
                 "--l1-coefficient", "0.5,4", "--k", "2,3", "--out", str(out), *REDUCED]) == 0
    entries = {entry["name"]: entry for entry in json.loads((out / "saes.json").read_text())}
    assert list(entries) == ["L1_standard_l1=0.5", "L1_standard_l1=4", "L1_topk_k=2", "L1_topk_k=3"]
    details = [SAE.load_from_disk(out / name).cfg.metadata.training_architecture_details for name in entries]
    assert [d.get("l1_coefficient") for d in details[:2]] == [0.5, 4.0]
    assert [SAE.load_from_disk(out / name).cfg.k for name in list(entries)[2:]] == [2, 3]
    assert all(entry["heads"] == [2, 0] for entry in entries.values())
    printed = capsys.readouterr().out
    assert ("evals skipped for L1_topk_k=3: SAELens's evals splice an SAE into all 4 heads of "
            "blocks.1.attn.hook_z; this SAE reads heads [2, 0] only, so they do not apply") in printed


def test_one_sae_is_saved_in_out_itself_and_listed_there(tiny_embedded, tmp_path):
    out = tmp_path / "one"
    assert main(["train", "--layers", "0", "--architecture", "standard", "--out", str(out),
                 "--eval-batches", "0", *REDUCED]) == 0
    [entry] = json.loads((out / "saes.json").read_text())
    assert (entry["name"], entry["path"]) == ("L0_standard", ".")
    assert SAE.load_from_disk(out).cfg.metadata.hook_name == "blocks.0.attn.hook_z"
    assert resolve_sae_folder(out) == out == resolve_sae_folder(out, "L0_standard")


@pytest.fixture
def listed_saes(tmp_path):
    """A train output folder with two SAEs of different sizes, as `saes.json` lists them."""
    from sae_lens import StandardSAE, StandardSAEConfig

    from sae_lens_attn.training.outputs import sae_list_entry, write_sae_list

    for name, d_sae in (("small", 8), ("large", 24)):
        sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=d_sae))
        HeadLayout(1, (0, 1, 2, 3), 16, 4).store_in(sae)
        sae.save_model(tmp_path / name)
    write_sae_list(tmp_path, [sae_list_entry(name, 1, [0, 1, 2, 3], "standard", name, {}) for name in ("small", "large")])
    return tmp_path


@pytest.mark.parametrize("command", [["detect"], ["dashboard"], ["circuit", "--feature", "0", "--prompt", "x"]])
def test_every_command_taking_sae_accepts_a_train_output_folder_and_a_name(listed_saes, command):
    parser = build_parser()
    for argv in (["--sae", str(listed_saes), "--sae-name", "large"], ["--sae-name", "large", "--sae", str(listed_saes)],
                 ["--sae", str(listed_saes / "large")]):
        assert parser.parse_args([*command, *argv]).sae == listed_saes / "large"


def test_sae_folder_resolution_names_the_choices(listed_saes, capsys):
    with pytest.raises(ValueError, match=r"holds 2 SAEs \(saes.json\); choose one with --sae-name: small, large"):
        resolve_sae_folder(listed_saes)
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["detect", "--sae", str(listed_saes), "--sae-name", "medium"])
    assert exit_info.value.code == 2
    assert "error: argument --sae-name: no SAE named 'medium' in" in capsys.readouterr().err
    with pytest.raises(ValueError, match="has no saes.json, so --sae-name 'small' names nothing"):
        resolve_sae_folder(listed_saes / "small", "small")
    with pytest.raises(InvalidInputError, match="holds 2 SAEs"):
        load_sae(listed_saes)
    entries = json.loads((listed_saes / "saes.json").read_text())
    entries[0]["path"] = "../elsewhere"
    (listed_saes / "saes.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"path '../elsewhere' of 'small' leaves"):
        resolve_sae_folder(listed_saes, "small")
    entries[0]["path"] = 3
    (listed_saes / "saes.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"must be a list of objects with keys .* \(name and path text\)"):
        resolve_sae_folder(listed_saes, "small")
    (listed_saes / "saes.json").write_text("[{")
    with pytest.raises(ValueError, match=r"saes.json is not valid JSON"):
        load_sae(listed_saes)


def test_dashboard_runs_on_an_sae_named_in_a_train_output_folder(listed_saes, tmp_path, monkeypatch, capsys):
    import sae_lens_attn.commands.dashboard as dashboard_command
    from sae_lens_attn.models.tokenizer import load_tokenizer, save_tokenizer, train_bpe_tokenizer
    from tests.conftest import make_tiny_model

    text = ["def add(a, b):\n    return a + b\n", "import os\nclass Path(object): pass\n"]
    folder = save_tokenizer(train_bpe_tokenizer(text, vocab_size=300), tmp_path / "tok", model_max_length=64)
    model = make_tiny_model(d_vocab=300, seed=4)
    model.set_tokenizer(load_tokenizer(folder))
    monkeypatch.setattr(dashboard_command, "load_model", lambda name: model)
    assert main(["dashboard", "--sae", str(listed_saes), "--sae-name", "large", "--features", "30",
                 "--n-prompts", "4", "--context-size", "16", "--out", str(tmp_path / "out")]) == 2
    assert "feature 30 is out of range; this SAE has features 0..23" in capsys.readouterr().err
    assert main(["dashboard", "--sae", str(listed_saes), "--sae-name", "large", "--features", "20",
                 "--n-prompts", "8", "--context-size", "16", "--out", str(tmp_path / "out")]) == 0
    document = json.loads((tmp_path / "out" / "features.json").read_text())
    assert [feature["feature_index"] for feature in document["features"]] == [20]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--context-size", "1"], "argument --context-size: 1 is too small: expected an integer >= 2"),
        (["--batch-size", "0"], "argument --batch-size: 0 is too small: expected an integer >= 1"),
        (["--training-tokens", "0"], "argument --training-tokens: 0 is too small: expected an integer >= 1"),
        (["--d-sae", "0"], "argument --d-sae: 0 is too small: expected an integer >= 1"),
        (["--expansion-factor", "-2"], "argument --expansion-factor: -2 is too small: expected an integer >= 1"),
        (["--l1-coefficient", "1,nan"], "argument --l1-coefficient: 'nan' is not finite: expected a finite number"),
        (["--l1-coefficient", "-1"], "argument --l1-coefficient: '-1' is negative: expected a number >= 0"),
        (["--eval-batches", "-1"], "argument --eval-batches: -1 is too small: expected an integer >= 0"),
        (["--dead-window-tokens", "0"], "argument --dead-window-tokens: 0 is too small: expected an integer >= 1"),
        (["--lr", "1e7"], "argument --lr: '1e7' is too large: expected a learning rate in (0, 1e+06]"),
        (["--target-l0", "0"], "argument --target-l0: '0' is not positive: expected a number > 0"),
        (["--matryoshka-widths", "512:128"], "argument --matryoshka-widths: bad widths '512:128': expected "
                                             "strictly increasing widths separated by ':', e.g. 128:512:2048"),
        (["--layers", "1,1"], "--layers lists a value twice: [1, 1]"),
        (["--out", "FILE"], "argument --out: 'FILE': is an existing file; expected a folder"),
        (["--out", "/proc/sae-lens-attn-out"], "argument --out: '/proc/sae-lens-attn-out': cannot write into /proc"),
    ],
)
def test_bad_train_options_exit_2_with_one_error_line_before_loading_anything(tmp_path, argv, message):
    (tmp_path / "FILE").write_text("not a folder")
    argv = [str(tmp_path / "FILE") if arg == "FILE" else arg for arg in argv]
    message = message.replace("'FILE'", repr(str(tmp_path / "FILE")))
    layer = [] if "--layers" in argv else ["--layer", "0"]
    result = subprocess.run([sys.executable, "-m", "sae_lens_attn.cli", "train", *layer, *argv],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    [error_line] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert error_line.startswith("error: ") and message in error_line
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["FILE"]  # nothing written


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--layers", "0,2"], "layer 2 is out of range; expected one of blocks.0.attn.hook_z .. blocks.1.attn.hook_z"),
        (["--layer", "0", "--context-size", "65"], "--context-size 65 exceeds the model's n_ctx: expected 2..64"),
        (["--layer", "0", "--architecture", "matching_pursuit", "--per-head-norm"],
         "--per-head-norm cannot be folded into L0_matching_pursuit: Folding activation whitening is not supported "
         "for MatchingPursuit SAEs"),
        (["--layer", "0", "--architecture", "topk", "--k", "200"], "--k 200 exceeds the 128 features of L0_topk: expected --k at most d_sae"),
        (["--layer", "0", "--architecture", "batchtopk", "--k", "129"], "--k 129 exceeds the 128 features of L0_batchtopk"),
        (["--layer", "0", "--architecture", "block_diagonal_batchtopk", "--k", "32.5"],
         "L0_block_diagonal_batchtopk: block_diagonal_batchtopk needs k (mean active features per head and token) "
         "in (0, d_sae_per_head=32], got k=32.5"),
        (["--layer", "0", "--architecture", "matryoshka_batchtopk", "--k", "4", "--matryoshka-widths", "64:256"],
         "--matryoshka-widths 64:256 exceeds the 128 features of L0_matryoshka_batchtopk: expected widths at most d_sae"),
        (["--layer", "0", "--k", "33"], "L0_block_diagonal: activation='topk' needs k (features per head) between 1 and d_sae_per_head=32"),
        (["--layer", "0", "--d-sae", "30"], "L0_block_diagonal: d_sae=30 is not divisible by n_heads=4; nearest valid: 28 or 32"),
    ],
)
def test_options_that_do_not_fit_the_model_exit_2_before_the_corpus_is_tokenized(tiny_embedded, tmp_path, capsys, argv, message):
    assert main(["train", "--context-size", "16", *argv, "--out", str(tmp_path / "out"), "--expansion-factor", "2"]) == 2
    [error_line] = capsys.readouterr().err.splitlines()
    assert error_line.startswith("error: ") and message in error_line
    assert tiny_embedded == [] and not (tmp_path / "out").exists()


ALL_SWEEP_VALUES = ",".join(str(c) for c in range(1, 66))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--architecture", "dense"], "unknown architecture 'dense': expected one of abstopk, batchtopk, "
                                      "block_diagonal, block_diagonal_batchtopk, block_diagonal_jumprelu, gated, "
                                      "jumprelu, matching_pursuit, matryoshka_batchtopk, standard, topk"),
        (["--architecture", "topk"], "--architecture topk needs --k (active features per token), e.g. --k 32"),
        (["--architecture", "block_diagonal_batchtopk"],
         "--architecture block_diagonal_batchtopk needs --k (active features per head and token), e.g. --k 4"),
        (["--architecture", "standard", "--k", "4"], "--k does not apply to --architecture standard; it applies to "
                                                     "abstopk, batchtopk, block_diagonal, block_diagonal_batchtopk, "
                                                     "matryoshka_batchtopk, topk"),
        (["--architecture", "topk", "--k", "4", "--l1-coefficient", "2"],
         "--l1-coefficient does not apply to --architecture topk; it applies to gated, standard"),
        (["--k", "4", "--l1-coefficient", "2"], "--l1-coefficient does not apply to --architecture block_diagonal; "
                                                "it applies to gated, standard (block_diagonal: without --k)"),
        (["--architecture", "jumprelu", "--k", "4"], "--k does not apply to --architecture jumprelu"),
        (["--architecture", "block_diagonal_jumprelu", "--k", "4"],
         "--k does not apply to --architecture block_diagonal_jumprelu"),
        (["--architecture", "standard,topk", "--k", "4", "--target-l0", "10"],
         "--target-l0 does not apply to --architecture standard,topk; it applies to block_diagonal_jumprelu, jumprelu"),
        (["--architecture", "block_diagonal", "--l1-coefficient", "2", "--aux-loss-coefficient", "0.5"],
         "--aux-loss-coefficient does not apply to --architecture block_diagonal"),
        (["--architecture", "matryoshka_batchtopk", "--k", "4"],
         "--architecture matryoshka_batchtopk needs --matryoshka-widths (nested widths, e.g. 128:512)"),
        (["--architecture", "topk", "--k", "2.5"], "--architecture topk needs a whole --k, got 2.5"),
        (["--k", "2.5"], "block_diagonal keeps a whole number of features per head: --k 2.5; for a mean per head "
                         "use block_diagonal_batchtopk"),
        (["--k", "4,4"], "--k lists a value twice: [4, 4]"),
        (["--architecture", "standard,standard"], "--architecture lists an architecture twice: standard,standard"),
        (["--architecture", "standard", "--l1-coefficient", ALL_SWEEP_VALUES],
         "these options ask for 65 SAEs (L0_standard_l1=1 .. L0_standard_l1=65), more than 64; pass --yes to train "
         "them all, or list fewer values"),
    ],
)
def test_architecture_and_knob_errors_exit_2_with_one_line_and_write_nothing(tiny_embedded, tmp_path, capsys, argv,
                                                                               message):
    assert main(["train", "--layer", "0", *argv, "--out", str(tmp_path / "out"), *REDUCED]) == 2
    captured = capsys.readouterr()
    [error_line] = captured.err.splitlines()
    assert error_line.startswith("error: ") and message in error_line
    assert captured.out == "" and tiny_embedded == [] and not (tmp_path / "out").exists()


def test_a_sweep_of_more_than_64_saes_runs_with_yes(tiny_embedded, tmp_path, monkeypatch):
    import sae_lens_attn.commands.train as train

    monkeypatch.setattr(train, "run_training", lambda train_saes: {})  # the check, not 65 trainings
    assert main(["train", "--layer", "0", "--architecture", "standard", "--l1-coefficient", ALL_SWEEP_VALUES,
                 "--yes", "--eval-batches", "0", "--out", str(tmp_path / "out"), *REDUCED]) == 0


def test_a_diverging_run_stops_in_that_step_and_keeps_the_last_good_checkpoint(tiny_embedded, tmp_path):
    """A real run at a huge learning rate: the loss overflows after some steps."""
    from safetensors.torch import load_file

    out = tmp_path / "sae"
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--layer", "1", "--architecture", "standard", "--lr", "1e4", "--checkpoint-every", "2",
              "--out", str(out), *REDUCED])
    message = str(stopped.value.code)
    found = re.fullmatch(
        r"error: training diverged in step (\d+): loss (\S+) \(mse_loss not finite\); (.*); last finite loss "
        r"(\S+) in step (\d+); the last good checkpoint is (\S+) \(resume from it with a lower --lr\); the SAE "
        r"was not saved: train again with a lower learning rate or sparsity coefficient", message)
    assert found, message
    step, loss, _, last_loss, last_step, checkpoint = found.groups()
    assert float(loss) in (float("inf"), float("-inf")) or loss == "nan"
    assert int(last_step) == int(step) - 1 and abs(float(last_loss)) < float("inf")
    steps = sorted(int(p.name.removeprefix("step_")) for p in (tmp_path / "sae-checkpoints").glob("*/step_*"))
    assert steps and max(steps) < int(step)  # nothing of the diverged step was saved
    assert checkpoint.endswith(f"step_{max(steps)}")
    for folder in (tmp_path / "sae-checkpoints").glob("*/step_*"):
        assert all(torch.isfinite(t).all() for t in load_file(folder / "sae_weights.safetensors").values())
    assert not (out / "cfg.json").exists()


def test_a_diverging_sae_of_a_multi_sae_run_is_named(tiny_embedded, tmp_path):
    out = tmp_path / "saes"
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--layers", "0,1", "--architecture", "standard", "--lr", "1e4", "--out", str(out), *REDUCED])
    message = str(stopped.value.code)
    assert re.match(r"error: SAE 'L[01]_standard': training diverged in step \d+: loss ", message), message
    assert message.endswith("; no checkpoint was saved before it; no SAE of this run was saved: train again with a "
                            "lower learning rate or sparsity coefficient")
    assert not (out / "saes.json").exists()


def test_autocast_trains_under_bf16_autocast_through_saelens_runner(tiny_embedded, tmp_path, monkeypatch):
    from sae_lens.training.sae_trainer import SAETrainer

    seen = []
    original = SAETrainer.__init__

    def spy(self, cfg, *args, **kwargs):
        seen.append(cfg.autocast)
        original(self, cfg, *args, **kwargs)

    monkeypatch.setattr(SAETrainer, "__init__", spy)
    assert main(["train", "--layer", "1", "--autocast", "--eval-batches", "0", "--out", str(tmp_path / "a"), *REDUCED]) == 0
    assert main(["train", "--layer", "1", "--eval-batches", "0", "--out", str(tmp_path / "b"), *REDUCED]) == 0
    assert seen == [True, False]


def test_autocast_on_a_cpu_without_native_bf16_warns_once_that_it_is_slow(tiny_embedded, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.warns(UserWarning) as record:
        assert main(["train", "--layer", "1", "--autocast", "--eval-batches", "0", "--out", str(tmp_path), *REDUCED]) == 0
    [warning] = [str(w.message) for w in record if "--autocast" in str(w.message)]
    assert warning.startswith("--autocast: this CPU has no native bf16 instructions") and "will be slow" in warning


def test_autocast_on_a_device_without_bf16_exits_2(tiny_embedded, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert main(["train", "--layer", "1", "--autocast", "--device", "cuda", "--out", str(tmp_path), *REDUCED]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == "error: --autocast: cuda does not support bf16; train without --autocast (float32)"
    assert tiny_embedded == []


def test_every_training_architecture_trains_from_one_pass_saves_reloads_and_is_evaluated(tiny_embedded, tmp_path):
    """Each name in SAELens's training registry (ours included), with the knobs each takes,
    from one model pass: saved, listed, loaded by SAELens, evaluated per head."""
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    # matching_pursuit cannot fold --per-head-norm's scale (tested below); the rest do
    architectures = sorted(set(SAE_TRAINING_CLASS_REGISTRY) - {"matching_pursuit"})
    out = tmp_path / "all"
    assert main(["train", "--layer", "1", "--architecture", ",".join(architectures), "--k", "4",
                 "--matryoshka-widths", "16:64", "--jumprelu-threshold", "0.02", "--jumprelu-bandwidth", "0.1",
                 "--topk-threshold-lr", "0.5", "--per-head-norm", "--eval-batches", "1", "--out", str(out), *REDUCED]) == 0
    entries = {entry["name"]: entry for entry in json.loads((out / "saes.json").read_text())}
    assert list(entries) == [f"L1_{a}" for a in architectures]
    saved_as = {"batchtopk": "jumprelu", "matryoshka_batchtopk": "jumprelu",
                "block_diagonal_batchtopk": "block_diagonal_jumprelu"}
    for architecture in architectures:
        entry = entries[f"L1_{architecture}"]
        sae = SAE.load_from_disk(out / entry["path"])
        assert entry["architecture"] == architecture == sae.cfg.metadata.training_architecture
        assert sae.cfg.architecture() == saved_as.get(architecture, architecture)
        assert {"ce_loss_score", "L1H0/l0", "L1H3/ce_loss_recovered"} <= set(entry["metrics"])
        details = sae.cfg.metadata.training_architecture_details
        if "jumprelu" in architecture:
            assert (details["jumprelu_init_threshold"], details["jumprelu_bandwidth"]) == (0.02, 0.1)
        if "batchtopk" in architecture:
            assert (details["k"], details["topk_threshold_lr"]) == (4, 0.5)
    assert SAE.load_from_disk(out / "L1_block_diagonal").cfg.k == 4  # per head: TopK in each block
    assert SAE.load_from_disk(out / "L1_topk").cfg.k == 4
    assert SAE.load_from_disk(out / "L1_matryoshka_batchtopk").cfg.metadata.training_architecture_details[
        "matryoshka_widths"] == [16, 64, 128]


def test_jumprelu_knobs_sweep_from_one_pass_and_name_each_sae(tiny_embedded, tmp_path):
    out = tmp_path / "sweep"
    assert main(["train", "--layer", "0", "--architecture", "jumprelu,block_diagonal_jumprelu,matching_pursuit",
                 "--jumprelu-threshold", "0.01,0.1", "--target-l0", "4,16", "--residual-threshold", "0.5",
                 "--eval-batches", "1", "--out", str(out), *REDUCED]) == 0
    names = [entry["name"] for entry in json.loads((out / "saes.json").read_text())]
    assert names == [f"L0_{a}_thr={t}_target_l0={l0}" for a in ("jumprelu", "block_diagonal_jumprelu")
                     for t in ("0.01", "0.1") for l0 in (4, 16)] + ["L0_matching_pursuit"]
    assert SAE.load_from_disk(out / "L0_matching_pursuit").cfg.residual_threshold == 0.5
    details = SAE.load_from_disk(out / "L0_block_diagonal_jumprelu_thr=0.1_target_l0=16").cfg.metadata[
        "training_architecture_details"]
    assert (details["jumprelu_init_threshold"], details["target_l0"], details["jumprelu_sparsity_loss_mode"]) == (
        0.1, 16, "quadratic")


@pytest.mark.parametrize("architecture", ["block_diagonal_batchtopk", "block_diagonal_jumprelu"])
def test_one_per_head_sae_trains_alone_through_the_single_sae_runner(tiny_embedded, tmp_path, capsys, architecture):
    out = tmp_path / "one"
    knob = ["--k", "2"] if "batchtopk" in architecture else ["--target-l0", "8"]
    assert main(["train", "--layer", "1", "--architecture", architecture, *knob, "--eval-batches", "1",
                 "--out", str(out), *REDUCED]) == 0
    sae = SAE.load_from_disk(out)
    assert type(sae).__name__ == "BlockDiagonalJumpReLUSAE" and sae.cfg.n_heads == 4
    assert sae.cfg.metadata.training_architecture == architecture
    saved_as = " (saved as block_diagonal_jumprelu)" if "batchtopk" in architecture else ""
    assert f"saved {architecture} SAE{saved_as} on blocks.1.attn.hook_z heads [0, 1, 2, 3]" in capsys.readouterr().out
    [entry] = json.loads((out / "saes.json").read_text())
    assert entry["architecture"] == architecture and "L1H2/l0" in entry["metrics"]


def test_dead_window_tokens_reach_saelens_dead_feature_window_in_whole_batches(monkeypatch, tmp_path):
    import sae_lens_attn.training.train as train_module
    from sae_lens_attn.training.multi_training import HookZSAESpec

    seen = {}

    def fake_train(*args, **kwargs):
        seen.update(kwargs["runner_kwargs"])
        return None, None

    monkeypatch.setattr(train_module, "train_hook_z_sae", fake_train)
    for window, steps in (("16384", 128), ("300", 3), ("1", 1)):
        args = build_parser().parse_args(["train", "--layer", "0", "--batch-size", "128", "--dead-window-tokens",
                                          window, "--out", str(tmp_path / "sae")])
        train_command.train_saes(args, None, [HookZSAESpec(0, None, "block_diagonal", {})], None, {})
        assert seen["dead_feature_window"] == steps
    args = build_parser().parse_args(["train", "--layer", "0", "--out", str(tmp_path / "sae")])
    train_command.train_saes(args, None, [HookZSAESpec(0, None, "block_diagonal", {})], None, {})
    assert seen["dead_feature_window"] == 4  # 16,384 tokens at the default batch of 4096
