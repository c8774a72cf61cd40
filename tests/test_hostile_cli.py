"""Hostile command lines: every bad argument or input is one `error:` line, exit code 2,
before any expensive step, and no output is left behind. Argument-level cases run
`cli.main` in-process; the exit-code and no-traceback claims run in fresh interpreters."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import make_tiny_model
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from sae_lens_attn import cli
from sae_lens_attn.commands import dashboard as dashboard_command

HOOK = "blocks.1.attn.hook_z"


@pytest.fixture(scope="module")
def truncated_sae(saved_sae_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("truncated") / "sae"
    shutil.copytree(saved_sae_dir, folder)
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    return folder


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["detect", "--n-prompts", "0"], "argument --n-prompts: 0 is too small: expected an integer >= 1"),
        (["detect", "--eval-sequences", "-1"], "argument --eval-sequences: -1 is too small"),
        (["detect", "--context-size", "0"], "argument --context-size: 0 is too small"),
        (["detect", "--regex", "nopattern"], "expected NAME=PATTERN"),
        (["detect", "--regex", "year=(19"], "is not a valid regular expression"),
        (["detect", "--features", "5-2"], "bad range '5-2'"),
        (["dashboard", "--n-prompts", "0"], "argument --n-prompts: 0 is too small"),
        (["dashboard", "--dfa-examples", "-1"], "argument --dfa-examples: -1 is too small"),
        (["dashboard", "--context-size", "1"], "argument --context-size: 1 is too small: expected an integer >= 2"),
        (["dashboard", "--panels", "a,,b"], "bad list 'a,,b'"),
        (["atlas", "--shard-size", "0"], "argument --shard-size: 0 is too small"),
        (["atlas", "--features", "3-1"], "bad range '3-1'"),
        (["circuit", "--feature", "0", "--prompt", "x", "--top-tokens", "-1"], "argument --top-tokens: -1 is too small"),
        (["circuit", "--feature", "0", "--prompt", "x", "--n-sources", "0"], "argument --n-sources: 0 is too small"),
        (["circuit", "--feature", "-1", "--prompt", "x"], "argument --feature: -1 is too small"),
        (["toy", "--threads", "0"], "argument --threads: 0 is too small"),
        (["toy", "--correlation-rank", "-1"], "argument --correlation-rank: -1 is too small"),
        (["toy", "--lr", "nan"], "argument --lr: 'nan' is not finite"),
        (["toy", "--batch-size", "0"], "argument --batch-size: 0 is too small"),
    ],
)
def test_bad_options_are_one_line_usage_errors(argv, message, saved_sae_dir, tmp_path, capsys):
    command, *rest = argv
    sae = [] if command == "toy" else ["--sae", str(saved_sae_dir)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, *sae, *rest, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["detect", "--sae", "{truncated}"], "sae_weights.safetensors is damaged or truncated"),
        (["detect", "--sae", "{missing}"], "does not exist (expected a folder as written by SAE.save_model)"),
        (["detect", "--sae", "{sae}", "--features", "999999"], "--features: feature 999999 is out of range; this SAE has features 0..15"),
        (["detect", "--sae", "{sae}", "--device", "bogus"], "--device 'bogus': not a torch device; expected cpu, cuda, cuda:N or mps"),
        (["detect", "--sae", "{sae}", "--detectors", " , "], "--detectors ' , ': no detector named"),
        (["detect", "--sae", "{sae}", "--out", "{file}"], "is an existing file; expected a folder"),
        (["dashboard", "--sae", "{sae}", "--families", "{missing}"], "--families {missing}: does not exist"),
        (["dashboard", "--sae", "{sae}", "--families", "{garbage}"], "not a families file written by `sae-lens-attn detect`"),
        (["dashboard", "--sae", "{sae}", "--panels", "nope"], "unknown dashboard_panel 'nope': available:"),
        (["circuit", "--sae", "{sae}", "--feature", "16", "--prompt", "x"], "--feature 16: out of range; this SAE has features 0..15"),
        (["atlas", "--sae", "{sae}", "--out", "{notes}"], "--out {notes}: exists and is not an atlas"),
        (["atlas", "--sae", "{sae}", "--out", "{file}"], "is an existing file; expected a folder"),
        (["atlas", "--sae", "{sae}", "--features", "16"], "--features: feature 16 is out of range"),
        (["atlas", "--sae", "{sae}", "--detectors", "nope"], "--detectors: unknown detector 'nope'"),
        (["atlas", "--sae", "{truncated}"], "sae_weights.safetensors is damaged or truncated"),
        (["circuit", "--sae", "{sae}", "--upstream-sae", "{truncated}", "--feature", "0", "--prompt", "x"], "damaged or truncated"),
    ],
)
def test_bad_inputs_fail_before_the_model_loads(argv, message, saved_sae_dir, truncated_sae, tmp_path,
                                                no_model, capsys):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "garbage.json").write_text('{"rows": [{"no": "fields"}]}')
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    paths = {"sae": saved_sae_dir, "truncated": truncated_sae, "missing": tmp_path / "missing",
             "file": tmp_path / "a_file", "garbage": tmp_path / "garbage.json", "notes": tmp_path / "notes"}
    argv = [arg.format(**paths) for arg in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert cli.main(argv) == 2
    assert message.format(**paths) in one_error_line(capsys)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["keep.txt"]


def test_unknown_model_names_close_matches_without_the_whole_list(saved_sae_dir, tmp_path, capsys):
    assert cli.main(["detect", "--sae", str(saved_sae_dir), "--model", "gpt2-smal", "--out", str(tmp_path)]) == 2
    line = one_error_line(capsys)
    assert "--model 'gpt2-smal': not a TransformerLens model name" in line
    assert "did you mean gpt2-small" in line and len(line) < 400


def test_layout_that_does_not_fit_the_model_fails_before_the_corpus(tmp_path, monkeypatch, capsys):
    sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=8, metadata=SAEMetadata(hook_name=HOOK)))
    sae.cfg.metadata["head_layout"] = {"layer": 0, "heads": [0, 1, 2, 3], "d_head": 16, "n_model_heads": 4}
    sae.save_model(tmp_path / "sae")
    monkeypatch.setattr(dashboard_command, "load_model", lambda name: make_tiny_model())
    import sae_lens_attn.models.dataset as dataset

    monkeypatch.setattr(dataset, "corpus_tokens", lambda *a, **k: pytest.fail("corpus tokenized first"))
    assert cli.main(["dashboard", "--sae", str(tmp_path / "sae"), "--features", "0-3",
                     "--out", str(tmp_path / "out")]) == 2
    assert "head_layout names blocks.0.attn.hook_z but the SAE's hook_name is 'blocks.1.attn.hook_z'" in one_error_line(capsys)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "sae_lens_attn.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_fresh_interpreter_exit_codes_and_no_traceback(truncated_sae, tmp_path):
    out = tmp_path / "out"
    bad_sae = run_cli("detect", "--sae", str(truncated_sae), "--out", str(out))
    assert bad_sae.returncode == 2
    assert bad_sae.stderr.splitlines() == [bad_sae.stderr.strip()]
    assert bad_sae.stderr.startswith(f"error: SAE folder {truncated_sae}: sae_weights.safetensors is damaged")
    bad_option = run_cli("circuit", "--sae", str(truncated_sae), "--feature", "0", "--prompt", "x",
                         "--top-tokens", "-1", "--out", str(out))
    assert bad_option.returncode == 2
    assert bad_option.stderr == ("error: argument --top-tokens: -1 is too small: expected an integer "
                                 ">= 1 (see `sae-lens-attn circuit --help`)\n")
    assert not out.exists()


def test_debug_flag_lets_the_traceback_through(truncated_sae, tmp_path):
    from sae_lens_attn.errors import InvalidInputError

    for argv in (["--debug", "detect"], ["detect", "--debug"]):
        with pytest.raises(InvalidInputError, match="damaged or truncated"):
            cli.main([*argv, "--sae", str(truncated_sae), "--out", str(tmp_path / "out")])


def test_families_written_by_detect_read_back(tmp_path):
    """The --families check accepts the real format (a control for the garbage case)."""
    from sae_lens_attn.commands.dashboard import read_families
    from sae_lens_attn.detectors.results import FamilyRow, save_family_rows

    save_family_rows([FamilyRow("induction", 1, "induction", 0.5, {"summary": "s"})], tmp_path)
    assert [row.feature for row in read_families(tmp_path / "families.json")] == [1]
    assert json.loads((tmp_path / "families.json").read_text())["rows"][0]["family"] == "induction"
