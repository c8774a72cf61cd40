"""`sae-lens-attn demo --quick` end to end, and the demo's own measurements."""

from __future__ import annotations

import json
import re

import pytest
import torch

from sae_lens_attn.cli import main
from sae_lens_attn.demo.pipeline import features_to_show
from sae_lens_attn.detectors.activity import feature_activity
from sae_lens_attn.sources.head_layout import HeadLayout

OUR_PANELS = {"dfa", "head_attribution", "logit_lens", "families"}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out


def test_quick_demo_writes_a_report_an_index_and_a_summary(demo_dir):
    report = (demo_dir / "report.md").read_text()
    index = (demo_dir / "index.html").read_text()
    summary = json.loads((demo_dir / "summary.json").read_text())
    assert [sae["architecture"] for sae in summary["saes"]] == ["block_diagonal", "standard"]
    for heading in (
        "Per-head L0",
        "Per-head evals",
        "Feature families",
        "is next by induction",
        "CE loss recovered",
    ):
        assert heading in report and heading in index
    assert "block_diagonal/dashboard/dashboard.html" in report
    assert 'href="block_diagonal/dashboard/dashboard.html"' in index
    assert "Plotly.newPlot" in index  # the per-head L0 chart


def test_quick_demo_reports_the_taxonomy_per_head_for_both_saes(demo_dir):
    from sae_lens_attn.detectors.results import load_family_rows

    index = (demo_dir / "index.html").read_text()
    assert "Source-signature taxonomy per head" in index
    assert index.count("taxonomy per head (") == 2  # one chart title per SAE
    summary = json.loads((demo_dir / "summary.json").read_text())
    for entry in summary["saes"]:
        taxonomy = entry["taxonomy"]
        rows = [
            r
            for r in load_family_rows(demo_dir / entry["architecture"] / "families")
            if r.detector == "taxonomy" and r.live
        ]
        assert (
            taxonomy["live"]
            == len(rows)
            == sum(sum(c.values()) for c in taxonomy["heads"].values())
        )
        assert sum(taxonomy["classes"].values()) == len(rows)
        assert set(taxonomy["heads"]) <= {f"L1H{h}" for h in range(4)}


def test_quick_demo_saves_loadable_saes_and_detector_results(demo_dir):
    from sae_lens import SAE

    from sae_lens_attn.detectors.results import load_family_rows
    from sae_lens_attn.models import load_embedded_model

    model = load_embedded_model()
    summary = json.loads((demo_dir / "summary.json").read_text())
    for entry in summary["saes"]:
        folder = demo_dir / entry["architecture"]
        sae = SAE.load_from_disk(folder / "sae")
        assert sae.cfg.architecture() == entry["architecture"]
        assert HeadLayout.from_sae(sae, model).hook_name == "blocks.1.attn.hook_z"
        rows = load_family_rows(folder / "families")
        assert {row.detector for row in rows} >= {"induction", "logit_lens", "enrichment"}
        induction = sorted(
            r.feature for r in rows if r.detector == "induction" and r.family == "induction"
        )
        assert induction == entry["induction_features"]
        metrics = entry["metrics"]
        assert 0 <= entry["dead_share"] <= 1 and metrics["l0"] >= 0
        assert sum(entry["per_head_l0"].values()) > 0


def test_quick_demo_dashboard_has_our_panels(demo_dir):
    summary = json.loads((demo_dir / "summary.json").read_text())
    block = summary["saes"][0]
    page = (demo_dir / block["dashboard"]).read_text()
    data = json.loads((demo_dir / block["dashboard"]).with_name("features.json").read_text())
    assert OUR_PANELS <= set(data["panels"])
    assert [f["feature_index"] for f in data["features"]] == block["dashboard_features"]
    for title in ("DFA by source position", "Head attribution", "Logit lens", "Family membership"):
        assert title in page


def test_quick_demo_per_head_l0_adds_up_to_the_reported_l0(demo_dir):
    summary = json.loads((demo_dir / "summary.json").read_text())
    report = (demo_dir / "report.md").read_text()
    for entry in summary["saes"]:
        assert sum(entry["per_head_l0"].values()) == pytest.approx(entry["l0"], rel=1e-4)
        head_evals = entry["head_evals"]  # on SAELens's eval prompts: the heads add up to its L0
        assert list(head_evals) == [f"L1H{h}" for h in range(4)]
        assert sum(h["l0"] for h in head_evals.values()) == pytest.approx(
            entry["metrics"]["l0"], rel=1e-4
        )
        families = json.loads(
            (demo_dir / entry["architecture"] / "families" / "families.json").read_text()
        )
        assert families["head_evals"] == head_evals
        assert f"| {entry['architecture']} | {entry['d_sae']} | {entry['l0']:.1f} |" in report


def test_quick_demo_is_deterministic_for_a_seed_and_thread_count(demo_dir, tmp_path):
    """A second run with the same seed (and the same threads: the test process's) finds the
    same features with the same numbers."""
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0

    def results(folder):
        summary = json.loads((folder / "summary.json").read_text())
        keys = ("metrics", "l0", "per_head_l0", "family_summary", "induction_features")
        return [{key: sae[key] for key in keys} for sae in summary["saes"]]

    assert results(tmp_path) == results(demo_dir)
    for architecture in ("block_diagonal", "standard"):
        families = f"{architecture}/families/families.json"
        assert (tmp_path / families).read_text() == (demo_dir / families).read_text()


def test_quick_demo_output_never_shows_a_replacement_character(demo_dir):
    """Byte-level tokens that are not UTF-8 alone show as `\\xe2`, never as U+FFFD, in
    every page, table and data file (the vendored d3 and plotly.js aside)."""
    from plotly.offline import get_plotlyjs

    from sae_lens_attn.dashboard.page import VENDOR_DIR

    vendored = [get_plotlyjs(), (VENDOR_DIR / "d3.v6.min.js").read_text(encoding="utf-8")]
    checked = 0
    for path in demo_dir.rglob("*"):
        if path.suffix not in {".html", ".md", ".json", ".csv"}:
            continue
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":  # JSON may write U+FFFD as an escape: compare the values
            text = json.dumps(json.loads(text), ensure_ascii=False)
        for script in vendored:
            text = text.replace(script, "")
        assert "\ufffd" not in text, f"U+FFFD in {path.relative_to(demo_dir)}"
        # nor as a JSON escape inside a page's data (an odd number of backslashes before it)
        assert not re.search(r"(?<!\\)(?:\\\\)*\\ufffd", text), path.relative_to(demo_dir)
        checked += 1
    assert checked >= 6
    page = next(demo_dir.rglob("dashboard.html")).read_text(encoding="utf-8")
    assert "\\x" in page  # byte escapes such as \xe2 reached the page


def test_per_head_l0_adds_up_and_matches_counting_blocks_of_a_dense_copy(tiny_model, tiny_tokens):
    from sae_lens_attn.architectures.block_diagonal import BlockDiagonalSAE, BlockDiagonalSAEConfig

    layout = HeadLayout.for_model(tiny_model, 1)
    torch.manual_seed(0)
    sae = BlockDiagonalSAE(
        BlockDiagonalSAEConfig(d_in=layout.d_in, d_sae=8 * layout.d_in, n_heads=layout.n_heads)
    )
    with torch.no_grad():
        sae.b_enc.fill_(-0.02)  # some features stay silent
    activity = feature_activity(tiny_model, sae, layout, tiny_tokens, batch_size=3)

    dense = sae.to_dense_sae()
    _, cache = tiny_model.run_with_cache(tiny_tokens)
    acts = (
        dense.encode(cache["blocks.1.attn.hook_z"].flatten(-2)).flatten(0, 1) > 0
    )  # [tokens, d_sae]
    m = sae.cfg.d_sae // layout.n_heads
    expected = acts.float().unflatten(1, (layout.n_heads, m)).sum(-1).mean(0)
    assert torch.allclose(activity.per_head_l0, expected, atol=1e-5)
    assert activity.l0 == pytest.approx(acts.float().sum(1).mean().item(), abs=1e-4)
    assert torch.equal(activity.fire_counts, acts.sum(0))
    assert activity.dead_share == pytest.approx(1 - acts.any(0).float().mean().item())


def test_dashboard_features_go_round_robin_over_heads_then_add_the_extra_ones(tiny_model):
    from sae_lens_attn.architectures.block_diagonal import BlockDiagonalSAE, BlockDiagonalSAEConfig

    layout = HeadLayout.for_model(tiny_model, 1)  # 4 heads
    sae = BlockDiagonalSAE(BlockDiagonalSAEConfig(d_in=layout.d_in, d_sae=4 * 8, n_heads=4))
    live = [0, 1, 2, 9, 10, 17, 30, 31]  # blocks of 8: heads 0,0,0,1,1,2,3,3
    assert features_to_show(sae, layout, live, 6, extra=[5, 9]) == [0, 9, 17, 30, 1, 10, 5]


def test_demo_on_a_hub_model_offline_says_to_use_the_embedded_model(monkeypatch, capsys, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["demo", "--quick", "--model", "gelu-2l", "--out", str(tmp_path)]) == 1
    assert "--model embedded" in capsys.readouterr().err
