"""Damaged SAE weights (issue 25): real saved folders whose tensors hold NaN, inf or zero
rows, loaded from Python and through the command line. NaN/inf is refused with one line
naming the tensors and features (exit 2, nothing written) unless `--allow-nonfinite`
skips the affected features; zero rows and silent features are warnings; an SAE with no
live feature exits 1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from safetensors.torch import load_file, save_file

from sae_lens_attn import cli
from sae_lens_attn.architectures.block_diagonal import BlockDiagonalSAE, BlockDiagonalSAEConfig
from sae_lens_attn.commands import circuit as circuit_command
from sae_lens_attn.commands import dashboard as dashboard_command
from sae_lens_attn.commands import detect as detect_command
from sae_lens_attn.detectors.results import load_family_rows
from sae_lens_attn.errors import InvalidInputError, NoLiveFeaturesError, NonFiniteWeightsError
from sae_lens_attn.sources.head_layout import HeadLayout
from sae_lens_attn.sources.saved_sae import load_saved_sae
from sae_lens_attn.sources.weight_check import (
    SAEWeightWarning,
    check_loaded_sae,
    inspect_weights,
    skipped_features,
)

NAN, INF = float("nan"), float("inf")


def all_nan(w):
    for tensor in w.values():
        tensor.fill_(NAN)


def one_nan_row(w):
    w["W_dec"][3, 5] = NAN


def inf_in_bias(w):
    w["b_enc"][7] = INF


def all_zero(w):
    w["W_dec"].zero_()
    w["W_enc"].zero_()


def some_zero_rows(w):
    w["W_dec"][[2, 9]] = 0.0


def nan_row_and_inf_bias(w):
    one_nan_row(w)
    inf_in_bias(w)


def quiet_features(w):  # features 0..9 never fire: their bias is far below any input
    w["b_enc"][:10] = -1e4


def silent(w):
    w["b_enc"][:] = -1e4


def damaged_copy(good, folder, damage):
    shutil.copytree(good, folder)
    path = folder / "sae_weights.safetensors"
    weights = load_file(path)
    damage(weights)
    save_file(weights, path)
    return folder


@pytest.fixture(scope="module")
def sae_on_model(tmp_path_factory, model_with_tokenizer):
    """A saved dense SAE (d_in 32 = heads 3 and 1 of layer 1, d_sae 16) for the tiny model;
    a positive b_enc makes every feature fire on some token."""
    layout = HeadLayout.for_model(model_with_tokenizer, layer=1, heads=[3, 1])
    sae = StandardSAE(StandardSAEConfig(d_in=layout.d_in, d_sae=16))
    with torch.no_grad():
        sae.b_enc.fill_(3.0)
    layout.store_in(sae)
    folder = tmp_path_factory.mktemp("good") / "sae"
    sae.save_model(folder)
    return folder


@pytest.fixture
def with_model(monkeypatch, model_with_tokenizer):
    for module in (detect_command, dashboard_command, circuit_command):
        monkeypatch.setattr(module, "load_model", lambda name: model_with_tokenizer)


# --- Python API -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage, features, parts",
    [
        (
            all_nan,
            tuple(range(16)),
            [
                "W_dec [16, 64] holds 1024 NaN (16 of 16 features)",
                "b_dec [64] holds 64 NaN (not per feature: all 16 features depend on it)",
                "16 of 16 features affected",
            ],
        ),
        (
            one_nan_row,
            (3,),
            [
                "W_dec [16, 64] holds 1 NaN (1 of 16 features)",
                "1 of 16 features affected (features 3)",
            ],
        ),
        (inf_in_bias, (7,), ["b_enc [16] holds 1 inf (1 of 16 features)", "(features 7)"]),
    ],
)
def test_nonfinite_weights_are_refused_naming_tensors_and_features(
    saved_sae_dir, tmp_path, damage, features, parts
):
    folder = damaged_copy(saved_sae_dir, tmp_path / "sae", damage)
    with pytest.raises(NonFiniteWeightsError) as raised:
        load_saved_sae(folder)
    error = raised.value
    assert isinstance(error, InvalidInputError) and isinstance(error, ValueError)
    assert error.features == features
    text = str(error)
    assert text.startswith(f"SAE folder {folder}: weights hold NaN or inf") and "\n" not in text
    for part in parts:
        assert part in text


def test_allow_nonfinite_zeroes_and_records_the_affected_features(saved_sae_dir, tmp_path):
    folder = damaged_copy(saved_sae_dir, tmp_path / "sae", nan_row_and_inf_bias)
    sae = load_saved_sae(folder, allow_nonfinite=True)
    assert skipped_features(sae) == (3, 7)
    assert inspect_weights(sae.state_dict(), 16).damaged == ()
    reference = load_file(folder / "sae_weights.safetensors")  # the other features are untouched
    kept = [f for f in range(16) if f not in (3, 7)]
    assert torch.equal(sae.W_dec[kept], reference["W_dec"][kept])
    assert torch.equal(sae.W_enc[:, kept], reference["W_enc"][:, kept])
    assert not sae.W_dec[[3, 7]].any() and not sae.W_enc[:, [3, 7]].any()
    acts = sae.encode(torch.randn(20, 64, generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(acts).all() and not acts[:, [3, 7]].any()


def test_block_diagonal_blocks_map_to_feature_h_times_m_plus_j():
    sae = BlockDiagonalSAE(BlockDiagonalSAEConfig(d_in=64, d_sae=32, n_heads=4))  # m = 8, d_head 16
    with torch.no_grad():
        sae.W_enc_blocks[2, 3, 5] = NAN  # head 2, column 5 -> feature 21
        sae.W_dec_blocks[1, 7, 0] = INF  # head 1, row 7 -> feature 15
        sae.W_dec_blocks[3, 2] = 0.0  # feature 26: zero decoder row
    dense_bad = (~torch.isfinite(sae.W_enc)).any(0) | (~torch.isfinite(sae.W_dec)).any(
        1
    )  # reference
    report = inspect_weights(sae.state_dict(), 32)
    assert report.nonfinite_features == tuple(dense_bad.nonzero().flatten().tolist()) == (15, 21)
    assert report.zero_decoder == (26,)
    with pytest.raises(
        NonFiniteWeightsError, match=r"W_enc_blocks \[4, 16, 8\] holds 1 NaN \(1 of 32 features\)"
    ):
        check_loaded_sae(sae, "published SAE")


def test_square_sae_uses_names_for_the_feature_axis():
    """d_in == d_sae: W_enc keeps features last, W_dec first, b_dec feeds every feature."""
    sae = StandardSAE(StandardSAEConfig(d_in=16, d_sae=16))
    with torch.no_grad():
        sae.W_enc[2, 5] = NAN
        sae.W_dec[7, 1] = NAN
    assert inspect_weights(sae.state_dict(), 16).nonfinite_features == (5, 7)
    with torch.no_grad():
        sae.b_dec[0] = INF
    assert inspect_weights(sae.state_dict(), 16).nonfinite_features == tuple(range(16))
    with pytest.raises(NoLiveFeaturesError, match="16 were skipped for NaN/inf"):  # nothing left
        check_loaded_sae(sae, "SAE", allow_nonfinite=True)


def test_sums_that_overflow_or_cancel_are_neither_damage_nor_zero_rows():
    """The fast path sums each feature's slice: an overflowing sum must fall back to the
    exact test, and a row that sums to zero is not a zero row."""
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=4))
    with torch.no_grad():
        sae.W_dec[0] = 3e38  # finite values whose sum overflows float32
        sae.W_dec[1] = torch.tensor([1.0, -1.0] * 4)  # sums to exactly 0
        sae.W_dec[2] = 1e-45  # the smallest subnormal: not zero
        sae.W_dec[3] = 0.0
    report = inspect_weights(sae.state_dict(), 4)
    assert report.damaged == () and report.zero_decoder == (3,)


def test_zero_rows_warn_and_an_all_zero_sae_has_no_live_feature(saved_sae_dir, tmp_path):
    folder = damaged_copy(saved_sae_dir, tmp_path / "some", some_zero_rows)
    with pytest.warns(
        SAEWeightWarning, match=r"2 of 16 features have zero decoder rows \(features 2, 9\)"
    ):
        load_saved_sae(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_saved_sae(saved_sae_dir)  # a healthy SAE: no warning
    folder = damaged_copy(saved_sae_dir, tmp_path / "zero", all_zero)
    with pytest.raises(
        NoLiveFeaturesError, match="no feature is live: of 16 features, 16 have zero decoder rows"
    ):
        with pytest.warns(SAEWeightWarning, match="16 of 16 features have zero encoder rows"):
            load_saved_sae(folder)


# --- command line -----------------------------------------------------------------------


def errors(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]


@pytest.mark.parametrize("damage", [all_nan, one_nan_row, inf_in_bias])
@pytest.mark.parametrize(
    "command", [["detect"], ["dashboard"], ["circuit", "--feature", "0", "--prompt", "x"]]
)
def test_commands_refuse_nonfinite_weights_before_the_model(
    saved_sae_dir, tmp_path, no_model, capsys, damage, command
):
    folder = damaged_copy(saved_sae_dir, tmp_path / "sae", damage)
    out = tmp_path / "out"
    assert cli.main([command[0], "--sae", str(folder), *command[1:], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    [line] = [
        line for line in err.splitlines() if "runtime" not in line
    ]  # a warning of in-process runs
    assert line.startswith(
        f"error: SAE folder {folder}: weights hold NaN or inf, so results would be meaningless: "
    )
    assert line.endswith(
        "; retrain or copy the SAE again (a diverged run or a bad copy leaves this), or pass "
        "--allow-nonfinite (allow_nonfinite=True) to skip the affected features"
    )
    assert not out.exists()


def test_all_zero_sae_exits_1_saying_no_feature_is_live(saved_sae_dir, tmp_path, no_model, capsys):
    folder = damaged_copy(saved_sae_dir, tmp_path / "sae", all_zero)
    with pytest.warns(SAEWeightWarning, match="16 of 16 features have zero decoder rows"):
        assert cli.main(["detect", "--sae", str(folder), "--out", str(tmp_path / "out")]) == 1
    assert errors(capsys) == [
        f"error: SAE folder {folder}: no feature is live: of 16 features, 16 have zero "
        "decoder rows and 0 were skipped for NaN/inf, so there is nothing to analyse "
        "(an untrained, emptied or damaged SAE)"
    ]
    assert not (tmp_path / "out").exists()


def run_detect(sae, out, *extra):
    return cli.main(
        [
            "detect",
            "--sae",
            str(sae),
            "--out",
            str(out),
            "--detectors",
            "logit_lens,induction",
            "--eval-sequences",
            "2",
            "--context-size",
            "32",
            "--n-prompts",
            "2",
            "--no-png",
            *extra,
        ]
    )


def test_detect_with_allow_nonfinite_skips_and_lists_the_features(
    sae_on_model, tmp_path, with_model, capsys
):
    folder = damaged_copy(sae_on_model, tmp_path / "sae", nan_row_and_inf_bias)
    assert run_detect(folder, tmp_path / "out") == 2  # refused without the flag
    assert not (tmp_path / "out").exists()
    capsys.readouterr()
    assert run_detect(folder, tmp_path / "out", "--allow-nonfinite") == 0
    assert (
        "skipped 2 of 16 features with NaN/inf weights (--allow-nonfinite): features 3, 7"
        in capsys.readouterr().out
    )
    document = json.loads((tmp_path / "out" / "families.json").read_text())
    assert document["skipped_nonfinite_features"] == [3, 7]
    assert {row["feature"] for row in document["rows"]} == set(range(16)) - {3, 7}


def test_detect_warns_about_zero_rows_and_silent_features(
    sae_on_model, tmp_path, with_model, capsys
):
    folder = damaged_copy(sae_on_model, tmp_path / "zero", some_zero_rows)
    with pytest.warns(
        SAEWeightWarning,
        match=r"2 of 16 features have zero decoder rows \(features 2, 9\): "
        "they write nothing and count as dead",
    ):
        assert run_detect(folder, tmp_path / "out") == 0
    rows = load_family_rows(tmp_path / "out")
    assert {row.feature for row in rows if not row.live} >= {2, 9}
    assert not any(row.family for row in rows if row.feature in (2, 9))

    folder = damaged_copy(sae_on_model, tmp_path / "quiet", quiet_features)
    with pytest.warns(
        SAEWeightWarning,
        match=r"10 of 16 features never fire on the 2 evaluation sequences "
        r"\(64 tokens; features 0, 1, ",
    ):
        assert run_detect(folder, tmp_path / "out2") == 0
    rows = load_family_rows(tmp_path / "out2")
    induction = [
        row for row in rows if row.detector == "induction"
    ]  # it decides liveness by tokens
    assert [row.feature for row in induction if not row.live] == list(range(10))


def test_detect_exits_1_when_no_feature_fires_on_the_evaluation_tokens(
    sae_on_model, tmp_path, with_model, capsys
):
    folder = damaged_copy(sae_on_model, tmp_path / "sae", silent)
    assert run_detect(folder, tmp_path / "out") == 1
    assert errors(capsys) == [
        "error: no feature is live: none of the 16 features analysed fires on the 2 "
        "evaluation sequences (64 tokens), so every result would be empty; nothing written"
    ]
    assert not (tmp_path / "out").exists()


def test_dashboard_and_circuit_with_allow_nonfinite(sae_on_model, tmp_path, with_model, capsys):
    folder = damaged_copy(sae_on_model, tmp_path / "sae", one_nan_row)
    out = tmp_path / "dash"
    assert (
        cli.main(
            [
                "dashboard",
                "--sae",
                str(folder),
                "--features",
                "2-4",
                "--n-prompts",
                "16",
                "--context-size",
                "32",
                "--allow-nonfinite",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert (
        "skipped 1 of 16 features with NaN/inf weights" in printed
        and "NaN/inf weights 3" in printed
    )
    document = json.loads((out / "features.json").read_text())
    assert [f["feature_index"] for f in document["features"]] == [2, 4]
    assert document["skipped_nonfinite_features"] == [3]
    assert (
        "Features 3: skipped: NaN or inf in their weights" in (out / "dashboard.html").read_text()
    )
    assert (
        cli.main(
            [
                "circuit",
                "--sae",
                str(folder),
                "--feature",
                "3",
                "--prompt",
                "def f(x):",
                "--allow-nonfinite",
                "--out",
                str(tmp_path / "circuit"),
            ]
        )
        == 2
    )
    assert errors(capsys) == [
        "error: --feature 3: has NaN/inf weights and is skipped (--allow-nonfinite); "
        "choose another feature"
    ]
    assert not (tmp_path / "circuit").exists()


def test_every_command_with_sae_takes_allow_nonfinite():
    parser = cli.build_parser()
    commands = next(
        a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"
    ).choices
    with_sae = [
        name
        for name, sub in commands.items()
        if any("--sae" in a.option_strings for a in sub._actions)
    ]
    assert {"detect", "dashboard", "circuit"} <= set(with_sae)
    for name in with_sae:
        assert any("--allow-nonfinite" in a.option_strings for a in commands[name]._actions), name


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sae_lens_attn.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


def test_fresh_interpreter_zero_sae_warns_then_exits_1(saved_sae_dir, tmp_path):
    folder = damaged_copy(saved_sae_dir, tmp_path / "sae", all_zero)
    result = run_cli("detect", "--sae", str(folder), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == ["warning", "warning", "error"]
    assert lines[0].endswith(
        "16 of 16 features have zero decoder rows (features 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, "
        "... (16 in all)): they write nothing and count as dead"
    )
    assert "--debug" not in lines[2]
    assert not (tmp_path / "out").exists()
