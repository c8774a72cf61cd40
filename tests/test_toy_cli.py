"""`sae-lens-attn toy`: a tiny end-to-end sweep writes the table, plots and report."""

import csv

import pytest

from sae_lens_attn.cli import main

TINY = ["toy", "--heads", "2", "--d-head", "4", "--features", "8", "--mean-l0", "1.5",
        "--sizes", "4,8,16", "--l1", "0.5", "--training-samples", "5000",
        "--eval-samples", "1000"]


def test_toy_command_writes_sweep_table_plots_and_report(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main([*TINY, "--single-head-fraction", "0.5", "--out", str(out)]) == 0
    with (out / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["architecture"], int(r["d_sae"])) for r in rows] == [
        (a, s) for a in ("standard", "block_diagonal") for s in (4, 8, 16)
    ]
    assert {"mmcs", "mmcs_single_head", "mmcs_multi_head", "split_mmcs_multi_head", "dead_share",
            "n_alive", "mmcs_head_0", "mmcs_head_1", "n_params"} <= set(rows[0])
    for name in ("mmcs_vs_size", "dead_share_vs_size", "dictionary_mmcs"):
        assert "plotly.min.js" in (out / f"{name}.html").read_text()
    assert (out / "plotly.min.js").is_file()  # the plots open offline
    report = (out / "report.md").read_text()
    assert "true features: **8** (4 single-head, 4 spanning 2 heads)" in report
    assert "## Estimated number of features" in report
    assert "## Multi-head features" in report and "1/sqrt(2) = 0.707" in report
    assert "4 + 2 x 4 = 12 block-diagonal latents, against 8 dense ones" in report
    assert "| 0.5 | 16 |" in report  # same parameter count: block 16 vs standard 8 latents
    printed = capsys.readouterr().out
    assert "true features: 8" in printed and "estimated features: dead latents:" in printed


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--architectures", "standard,topk"], "unknown architectures"),
        (["--sizes", "4,5"], "d_sae divisible by n_heads=2"),
        (["--l1", "a,b"], "bad list"),
    ],
)
def test_toy_command_rejects_bad_options_before_training(tmp_path, capsys, extra, message):
    try:
        code = main([*TINY, *extra, "--out", str(tmp_path)])
    except SystemExit as raised:  # argparse's own check
        code = raised.code
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and message in error
    assert not (tmp_path / "sweep.csv").exists()
