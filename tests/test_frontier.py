"""The frontier: points read from `saes.json` files, interpolation at target L0s against
hand-computed values, the equal-token and equal-time gaps, the four files `frontier`
writes (the page checked in headless Chromium), and its bad inputs."""

import json
import math
import time

import pytest

from sae_lens_attn.cli import main
from sae_lens_attn.training.frontier import (
    DENSE,
    PER_HEAD,
    equal_time_gaps,
    equal_token_gaps,
    frontier_lines,
    interpolate,
    read_frontier_points,
)
from tests import test_dashboard, test_training_cli
from tests.test_dashboard import parse_dom, run_chromium
from tests.test_training_cli import REDUCED

chromium = test_dashboard.chromium  # the session fixture: Chromium, installed if missing
tiny_embedded = (
    test_training_cli.tiny_embedded
)  # the tiny model and corpus standing in for the embedded ones
MARKUP_LABEL = "<b>x</b>&"
PER_HEAD_CFG = {"d_in": 128, "d_sae": 1024, "n_heads": 4, "activation": "topk"}
DENSE_CFG = {"d_in": 128, "d_sae": 1024}


def write_sweep(folder, saes, layer=1):
    """A fake `train --out` folder: `saes` is a list of `(name, architecture, cfg, metrics)`."""
    folder.mkdir(parents=True)
    entries = []
    for name, architecture, cfg, metrics in saes:
        (folder / name).mkdir()
        (folder / name / "cfg.json").write_text(json.dumps(cfg))
        entries.append(
            {
                "name": name,
                "layer": layer,
                "heads": [0, 1, 2, 3],
                "architecture": architecture,
                "path": name,
                "metrics": metrics,
            }
        )
    (folder / "saes.json").write_text(json.dumps(entries))
    return folder / "saes.json"


def point(l0, ce, tokens, seconds, ev=None, heads=None):
    metrics = {
        "l0": l0,
        "ce_loss_score": ce,
        "explained_variance": ev if ev is not None else ce - 0.2,
        "training_tokens": tokens,
        "training_seconds": seconds / 2,
        "training_seconds_alone": seconds,
    }
    for head, (head_l0, head_ce) in (heads or {}).items():
        metrics[f"L1H{head}/l0"], metrics[f"L1H{head}/ce_loss_recovered"] = head_l0, head_ce
    return metrics


@pytest.fixture
def sweeps(tmp_path):
    """Per-head TopK at 100k and 200k tokens (10 s and 20 s), dense TopK at 100k (16 s)."""
    short = write_sweep(
        tmp_path / "short",
        [
            (
                "ph_k2",
                "block_diagonal",
                PER_HEAD_CFG,
                point(8, 0.70, 100_000, 10, heads={0: (2, 0.6), 1: (2, 0.7)}),
            ),
            ("ph_k10", "block_diagonal", PER_HEAD_CFG, point(40, 0.90, 100_000, 10)),
            ("topk_k5", "topk", DENSE_CFG, point(5, 0.60, 100_000, 16)),
            ("topk_k20", "topk", DENSE_CFG, point(20, 0.85, 100_000, 16)),
            ("topk_k80", "topk", DENSE_CFG, point(80, 0.95, 100_000, 16)),
            ("markup", MARKUP_LABEL, DENSE_CFG, point(10, 0.5, 100_000, 16)),
        ],
    )
    long = write_sweep(
        tmp_path / "long",
        [
            ("ph_k2", "block_diagonal", PER_HEAD_CFG, point(8, 0.80, 200_000, 20)),
            ("ph_k10", "block_diagonal", PER_HEAD_CFG, point(40, 0.96, 200_000, 20)),
        ],
    )
    return short, long


def test_interpolation_is_linear_in_log_l0_and_never_extrapolates():
    assert interpolate([(10, 0.5), (40, 0.9)], 20) == pytest.approx(
        0.5 + 0.4 * math.log(2) / math.log(4)
    )
    assert interpolate([(40, 0.9), (10, 0.5)], 10) == 0.5
    assert (
        interpolate([(10, 0.5), (40, 0.9)], 41) is None
        and interpolate([(10, 0.5), (40, 0.9)], 9) is None
    )
    assert interpolate([(10, 0.5), (20, 0.7), (40, 0.9)], 30, log=False) == pytest.approx(0.8)
    assert interpolate([(10, 0.4), (10, 0.6)], 10) == pytest.approx(0.5)  # equal L0s averaged


def test_points_carry_family_label_parameters_and_per_head_values(sweeps):
    points = read_frontier_points(list(sweeps))
    by_name = {(p.sweep, p.name): p for p in points}
    per_head = by_name[(str(sweeps[0]), "ph_k2")]
    assert (per_head.label, per_head.family) == ("block_diagonal topk", PER_HEAD)
    assert per_head.n_params == 2 * 32 * 1024 + 1024 + 128  # a quarter of the dense weights
    assert by_name[(str(sweeps[0]), "topk_k20")].n_params == 2 * 128 * 1024 + 1024 + 128
    assert by_name[(str(sweeps[0]), "topk_k20")].family == DENSE
    assert per_head.heads == {
        "L1H0": {"l0": 2, "ce_loss_recovered": 0.6},
        "L1H1": {"l0": 2, "ce_loss_recovered": 0.7},
    }
    lines = frontier_lines(points)
    assert [line.name for line in lines] == [
        MARKUP_LABEL + ", 100k tokens",
        "block_diagonal topk, 100k tokens",
        "block_diagonal topk, 200k tokens",
        "topk, 100k tokens",
    ]


def test_equal_token_gaps_match_hand_values(sweeps):
    lines = frontier_lines(read_frontier_points([sweeps[0]]))
    rows = {row["l0"]: row for row in equal_token_gaps(lines)["rows"]}
    # per-head 100k: L0 8 -> 0.70, 40 -> 0.90; at 20: 0.70 + 0.20 * log(20/8) / log(5)
    per_head_20 = 0.70 + 0.20 * math.log(2.5) / math.log(5)
    assert rows[20.0]["per_head"] == pytest.approx(per_head_20)
    assert rows[20.0]["dense"] == pytest.approx(0.85) and rows[20.0]["dense_label"] == "topk"
    # dense at 8: topk between 5 and 20 (0.60 + 0.25 * log(8/5)/log 4) beats the markup line (0.5 at 10, alone)
    dense_8 = 0.60 + 0.25 * math.log(1.6) / math.log(4)
    assert rows[8.0]["gap"] == pytest.approx(0.70 - dense_8)
    dense_40 = 0.85 + 0.10 * math.log(2) / math.log(4)
    assert rows[40.0]["gap"] == pytest.approx(0.90 - dense_40)
    assert equal_token_gaps(lines)["min_gap"] == pytest.approx(
        min(0.70 - dense_8, per_head_20 - 0.85, 0.90 - dense_40)
    )


def test_equal_time_gives_each_architecture_the_budget_every_one_reaches(sweeps):
    lines = frontier_lines(read_frontier_points(list(sweeps)))
    row = {row["l0"]: row for row in equal_time_gaps(lines)["rows"]}[8.0]
    # the budget is dense TopK's 16 s (the last to have any run at L0 8); per-head TopK at
    # 16 s lies between its 10 s (0.70) and 20 s (0.80) runs, linear in log seconds
    assert row["budget_seconds"] == 16
    assert row["per_head"] == pytest.approx(0.70 + 0.10 * math.log(1.6) / math.log(2))
    assert row["dense"] == pytest.approx(0.60 + 0.25 * math.log(1.6) / math.log(4))
    fixed = {r["l0"]: r for r in equal_time_gaps(lines, budget=30)["rows"]}[8.0]
    assert fixed["per_head"] == pytest.approx(0.80)  # its longest run took less than 30 s
    assert {r["l0"]: r for r in equal_time_gaps(lines, budget=5)["rows"]}[8.0]["gap"] is None


def test_frontier_command_writes_all_four_files_from_several_sweeps(sweeps, tmp_path, capsys):
    out = tmp_path / "frontier"
    assert main(["frontier", *map(str, sweeps), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "frontier.csv",
        "frontier.html",
        "frontier.json",
        "frontier.png",
    ]
    summary = json.loads((out / "frontier.json").read_text())
    assert len(summary["points"]) == 8 and summary["rule_of_thumb"] == {
        "l0": 20.0,
        "ce_loss_score": 0.8,
    }
    assert summary["equal_time"]["rows"][0]["budget_seconds"] == 16
    csv_text = (out / "frontier.csv").read_text()
    assert csv_text.splitlines()[0].startswith("sweep,name,label,family,hook,l0,ce_loss_score")
    assert len(csv_text.splitlines()) == 9
    printed = capsys.readouterr().out
    assert (
        "100,000 tokens, L0 8: best per-head 0.700" in printed
        and "equal time (16 s), L0 8" in printed
    )
    from PIL import Image

    with Image.open(out / "frontier.png") as image:
        assert image.size[0] > 800 and image.size[1] > 600
        assert len(image.convert("RGB").getcolors(1 << 20)) > 50  # drawn lines, not a blank canvas


def test_frontier_page_opens_offline_and_draws_every_line_with_labels_as_text(
    sweeps, tmp_path, chromium
):
    out = tmp_path / "frontier"
    assert main(["frontier", *map(str, sweeps), "--out", str(out)]) == 0
    assert "<script src=" not in (out / "frontier.html").read_text()  # plotly.js inlined
    dom = parse_dom(run_chromium(chromium, out / "frontier.html", tmp_path / "profile"))
    assert len(dom.find_all(cls="main-svg")) >= 1
    legend = [
        node.text() for node in dom.iter() if node.tag == "text" and "legendtext" in node.classes()
    ]
    assert "block_diagonal topk, 200k tokens" in legend and "topk, 100k tokens" in legend
    assert MARKUP_LABEL + ", 100k tokens" in legend  # shown as text, not rendered as bold
    assert not dom.find_all("b")


def written(name, data):
    """A function that writes `data` to `name` in a folder and returns the file."""

    def make(folder):
        (folder / name).write_bytes(data)
        return folder / name

    return make


@pytest.mark.parametrize(
    "make, message",
    [
        (written("cfg.json", b"{}"), "cfg.json is not a saes.json"),
        (written("saes.json", b'{"a": 1}'), "must be a list of objects"),
        (written("saes.json", b"\xff\xfe"), "is not a readable saes.json"),
        (written("saes.json", b"[]"), "lists no SAE"),
        (lambda folder: folder / "missing" / "saes.json", "is not a saes.json"),
    ],
)
def test_frontier_refuses_files_that_are_not_a_saes_json(tmp_path, capsys, make, message):
    given = make(tmp_path)
    out = tmp_path / "out"
    assert main(["frontier", str(given), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ") and message in error
    assert not out.exists()


def test_frontier_refuses_runs_on_different_hooks(tmp_path, capsys):
    one = write_sweep(tmp_path / "a", [("x", "topk", DENSE_CFG, point(5, 0.5, 10, 1))], layer=0)
    two = write_sweep(tmp_path / "b", [("x", "topk", DENSE_CFG, point(5, 0.5, 10, 1))], layer=1)
    assert main(["frontier", str(one), str(two), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert (
        "different hooks (blocks.0.attn.hook_z heads [0, 1, 2, 3], blocks.1.attn.hook_z heads"
        in error
    )
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- train: defaults, seconds, frontier


def test_default_k_is_a_quarter_of_the_head_size():
    from sae_lens_attn.training.configs import default_k_per_head

    assert [default_k_per_head(d) for d in (2, 4, 16, 32, 64)] == [1, 1, 4, 8, 16]


def test_train_with_no_sparsity_option_trains_per_head_topk_with_k_from_d_head(
    tiny_embedded, tmp_path
):
    from sae_lens import SAE

    out = tmp_path / "default"
    assert main(["train", "--layer", "1", "--out", str(out), "--eval-batches", "0", *REDUCED]) == 0
    sae = SAE.load_from_disk(out)
    assert (sae.cfg.architecture(), sae.cfg.activation, sae.cfg.k) == (
        "block_diagonal",
        "topk",
        16 // 4,
    )
    assert not (out / "frontier").exists()  # one SAE: no frontier


def test_a_sweep_records_seconds_that_add_up_and_draws_its_frontier(
    tiny_embedded, tmp_path, capsys
):
    out = tmp_path / "sweep"
    began = time.perf_counter()
    assert (
        main(
            [
                "train",
                "--layer",
                "1",
                "--architecture",
                "block_diagonal,topk",
                "--k",
                "2,4",
                "--eval-batches",
                "1",
                "--dead-tokens",
                "0",
                "--out",
                str(out),
                *REDUCED,
            ]
        )
        == 0
    )
    wall = time.perf_counter() - began
    entries = json.loads((out / "saes.json").read_text())
    seconds = [entry["metrics"]["training_seconds"] for entry in entries]
    alone = [entry["metrics"]["training_seconds_alone"] for entry in entries]
    assert all(entry["metrics"]["training_tokens"] >= 2048 for entry in entries)
    # equal shares of the shared model passes: the four add up to the run, which took less than the command
    assert all(0 < s < a for s, a in zip(seconds, alone, strict=True)) and sum(seconds) < wall
    assert max(a - s for s, a in zip(seconds, alone, strict=True)) == pytest.approx(
        min(a - s for s, a in zip(seconds, alone, strict=True))
    )
    assert sorted(p.name for p in (out / "frontier").iterdir()) == sorted(
        ["frontier.csv", "frontier.html", "frontier.json", "frontier.png"]
    )
    summary = json.loads((out / "frontier" / "frontier.json").read_text())
    assert {line["label"] for line in summary["lines"]} == {"block_diagonal topk", "topk"}
    assert "frontier of 4 SAEs in 2 lines" in capsys.readouterr().out


def test_a_data_driven_initialisation_gets_a_line_of_its_own():
    from sae_lens_attn.training.frontier import training_label

    def cfg(init=None):
        metadata = {"training_architecture": "block_diagonal"}
        if init is not None:
            metadata["initialisation"] = {"b_dec": init[0], "decoder": init[1], "sample_tokens": 16}
        return {"activation": "topk", "metadata": metadata}

    entry = {"architecture": "block_diagonal"}
    assert training_label(entry, cfg()) == "block_diagonal topk"
    assert training_label(entry, cfg(("zeros", "kaiming"))) == "block_diagonal topk"
    assert (
        training_label(entry, cfg(("mean", "active_subspace")))
        == "block_diagonal topk init mean+active_subspace"
    )
