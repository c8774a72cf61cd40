"""`sae-lens-attn detect` end to end on a tiny model with a real (locally trained) tokenizer."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from sae_lens import StandardSAE, StandardSAEConfig

from sae_lens_attn.cli import main
from sae_lens_attn.commands import detect
from sae_lens_attn.detectors.results import load_family_rows
from sae_lens_attn.plugins import get_plugin_manager
from sae_lens_attn.sources.head_layout import HeadLayout


@pytest.fixture(scope="module")
def saved_sae(tmp_path_factory, model_with_tokenizer):
    layout = HeadLayout.for_model(model_with_tokenizer, layer=1, heads=[3, 1])
    sae = StandardSAE(StandardSAEConfig(d_in=layout.d_in, d_sae=16))
    layout.store_in(sae)
    folder = tmp_path_factory.mktemp("sae")
    sae.save_model(folder)
    return folder


def test_built_in_detectors_are_plugins_of_kind_detector():
    names = {loaded.entry.name for loaded in get_plugin_manager().entries("detector")}
    assert {"induction", "logit_lens", "enrichment", "current_token", "previous_token", "duplicate_token",
            "local_context", "high_level_context", "code_region", "taxonomy"} <= names
    detector = get_plugin_manager().get("detector", "logit_lens")
    assert detector.name == "logit_lens" and callable(detector.detect)


def test_detect_writes_families_and_figures_for_every_feature(tmp_path, monkeypatch, capsys, model_with_tokenizer, saved_sae):
    monkeypatch.setattr(detect, "load_model", lambda name: model_with_tokenizer)
    out = tmp_path / "out"
    assert "code_region" not in detect.DEFAULT_DETECTORS.split(",")  # opt-in: see detect.py
    names = [*detect.DEFAULT_DETECTORS.split(","), "code_region"]
    code = main(
        ["detect", "--sae", str(saved_sae), "--out", str(out), "--eval-sequences", "2",
         "--context-size", "32", "--regex", "has_e=.*e", "--n-prompts", "2", "--no-png",
         "--detectors", ",".join(names)]
    )
    assert code == 0
    rows = load_family_rows(out)
    assert sorted({(row.detector, row.feature) for row in rows}) == sorted(
        (name, f) for name in names for f in range(16)
    )
    document = json.loads((out / "families.json").read_text())
    assert set(document["summary"]) == set(names)
    taxonomy = [row for row in rows if row.detector == "taxonomy" and row.live]
    heads = {}
    for row in taxonomy:  # the table counts each live feature once, for its decoder's top head
        heads.setdefault(row.evidence["head"], {}).setdefault(row.family, 0)
        heads[row.evidence["head"]][row.family] += 1
    assert document["heads"] == heads and set(heads) <= {"L1H3", "L1H1"}
    assert "heads_fractional" in document  # a dense SAE
    assert list(document["head_evals"]) == ["L1H3", "L1H1"]  # per-head evals, in the SAE's head order
    assert sum(h["features"] for h in document["head_evals"].values()) == 16
    regions = [row for row in rows if row.detector == "code_region" and row.live]
    assert regions and all("region_auc" in row.evidence for row in regions)  # the corpus rows were labelled
    for stem in ("logit_lens_skew_kurtosis", "enrichment_families", "heads"):
        assert (out / f"{stem}.html").stat().st_size > 100_000  # plotly.js is embedded
    enrichment = [row for row in rows if row.detector == "enrichment"]
    assert any("NLTK" in note for note in enrichment[0].evidence.get("notes", []))
    printed = capsys.readouterr().out
    assert "wrote" in printed and "families.csv" in printed and "taxonomy per head" in printed
    assert "CE rec." in printed  # the per-head evals' columns in the per-head table


def test_detect_rejects_unknown_detectors_and_bad_regex(saved_sae, tmp_path, capsys):
    assert main(["detect", "--sae", str(saved_sae), "--detectors", "nope", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        "error: --detectors: unknown detector 'nope': available: code_region, current_token, duplicate_token, enrichment, "
        "high_level_context, induction, local_context, logit_lens, previous_token, taxonomy\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "--sae", str(saved_sae), "--regex", "nopattern", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "expected NAME=PATTERN" in capsys.readouterr().err
    assert main(["detect", "--sae", str(saved_sae), "--threshold", "min_share=1", "--out", str(tmp_path)]) == 2
    assert re.search(r"error: --threshold 'min_share=1'.*min_dfa_share", capsys.readouterr().err)
    assert main(["detect", "--sae", str(saved_sae), "--threshold", "min_dfa_share=2", "--out", str(tmp_path)]) == 2
    assert re.search(r"min_dfa_share must be in \[0, 1\]", capsys.readouterr().err)


def test_figures_are_saved_as_html_and_png_where_kaleido_can_render(tmp_path):
    pytest.importorskip("kaleido")
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        pytest.skip("kaleido needs a Chrome/Chromium to render PNGs")
    import plotly.graph_objects as go

    written = detect.save_figure(go.Figure(go.Scatter(x=[0, 1], y=[1, 0])), tmp_path, "f")
    assert written == [tmp_path / "f.html", tmp_path / "f.png"]
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"


def test_listing_detectors_and_building_the_cli_import_no_torch():
    import subprocess
    import sys

    code = (
        "import sys, sae_lens_attn.detectors.plugin, sae_lens_attn.detectors, "
        "sae_lens_attn.commands.detect; print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
