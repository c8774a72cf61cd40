"""Hostile text in outputs: markup in plotly labels (checked in headless Chromium),
spreadsheet formulas and control characters in CSV cells, and failures that must leave
no file that looks finished."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from sae_lens_attn._atomic import atomic_write_text
from sae_lens_attn._safe_output import csv_cell, plotly_text, write_csv, write_figure_html
from sae_lens_attn.detectors.results import FamilyRow, load_family_rows, save_family_rows

LINK = '<a href="https://example.com/x">click</a> <b>bold</b><br>next'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LIVE_LINK = re.compile(r'<a [^>]*href="https://example\.com/x"')


def rendered_dom(html_path, profile) -> str:
    """The DOM of `html_path` after plotly ran, from headless Chromium (no network)."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
         "--dump-dom", html_path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert "plotly" in result.stdout, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install -y chromium)")
def test_plotly_labels_render_markup_as_text_in_chromium(tmp_path):
    import plotly.graph_objects as go

    from sae_lens_attn.dashboard.circuit_panel import effects_figure

    pages = {}
    for name, label in [("raw", LINK), ("escaped", plotly_text(LINK))]:
        figure = go.Figure(go.Bar(x=[label], y=[1.0], text=[label], name=label))
        figure.update_layout(title=label)
        pages[name] = write_figure_html(figure, tmp_path / f"{name}.html")
    raw = rendered_dom(pages["raw"], tmp_path / "profile-raw")
    assert LIVE_LINK.search(raw), "control: plotly no longer renders <a href> in labels"
    escaped = rendered_dom(pages["escaped"], tmp_path / "profile-escaped")
    assert not LIVE_LINK.search(escaped)
    assert escaped.count('&lt;a href="https://example.com/x"&gt;click&lt;/a&gt; &lt;b&gt;bold') >= 3

    class Circuit:  # the fields effects_figure reads, with a hostile token
        feature, destination = 3, 5
    rows = [{"token": LINK, "direct": 1.0, "total": 2.0}]
    import sae_lens_attn.attribution.circuit.feature as circuit_module
    original = circuit_module.downstream_rows
    circuit_module.downstream_rows = lambda circuit, k, decode: rows
    try:
        page = write_figure_html(effects_figure(Circuit()), tmp_path / "effects.html")
    finally:
        circuit_module.downstream_rows = original
    assert not LIVE_LINK.search(rendered_dom(page, tmp_path / "profile-effects"))


@pytest.mark.parametrize(
    "value, cell",
    [
        ('=HYPERLINK("https://example.com","x")', '\'=HYPERLINK("https://example.com","x")'),
        ("+1+2", "'+1+2"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"), ("\rx", "'\rx"), ("a\x00b\x07", "a\ufffdb\ufffd"), ("plain", "plain"),
        (-1.5, -1.5), (3, 3),
    ],
)
def test_csv_cells_are_neutralised(value, cell):
    assert csv_cell(value) == cell


def test_family_csv_is_formula_safe_and_reads_back(tmp_path):
    hostile = '=HYPERLINK("https://example.com","x")'
    rows = [FamilyRow("detector\x00", 1, hostile, 0.5, {"summary": "ok"}),
            FamilyRow("detector", 2, "-minus", float("nan"), {"summary": "\x00nul"})]
    csv_path, _ = save_family_rows(rows, tmp_path)
    raw = csv_path.read_bytes()
    assert b"\x00" not in raw
    with csv_path.open(newline="") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in cells)
    back = load_family_rows(csv_path)
    assert [row.family for row in back] == [hostile, "-minus"]
    assert [row.family for row in load_family_rows(tmp_path / "families.json")] == [hostile, "-minus"]


def test_a_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "table.csv"
    with pytest.raises(ValueError):
        write_csv(target, [{"a": 1}, {"b": 2}])  # second row has a field not in the header
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(tmp_path / "page.html", "lone surrogate \ud800")
    assert list(tmp_path.iterdir()) == []


def test_dashboard_whose_json_fails_leaves_no_page(tmp_path):
    """A NaN in a panel's data (or anything else failing at the end) writes neither file."""
    from conftest import make_tiny_model

    from sae_lens_attn.dashboard.panels import DashboardPanel, PanelOutput
    from sae_lens_attn.dashboard.render import render_dashboard

    class NaNPanel(DashboardPanel):
        name, title = "nan_panel", "NaN"

        def render(self, report, context):
            return PanelOutput(html="<p>x</p>", data={"value": float("nan")})

    model = make_tiny_model()
    sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=8, metadata=SAEMetadata(hook_name="blocks.1.attn.hook_z")))
    with torch.no_grad():
        sae.W_enc.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(0))
        sae.W_dec[2] = 0.0  # dead: skipped by name, not a crash
    tokens = torch.randint(0, 101, (8, 16), generator=torch.Generator().manual_seed(0))
    out = tmp_path / "dash"
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        render_dashboard(model, sae, tokens, [1, 2], out, panels=[NaNPanel()])
    assert not out.exists() or not any(out.iterdir())
    files = render_dashboard(model, sae, tokens, [1, 2], out, panels=[])
    assert files.skipped == (2,) and files.html.stat().st_size > 0


def test_markdown_cells_carry_no_html_and_no_column_breaks():
    from sae_lens_attn._safe_output import markdown_text
    from sae_lens_attn.demo.report import Link, _md_cell

    assert markdown_text('<img src=x onerror="a|b">\nnext') == '&lt;img src=x onerror="a\\|b"&gt; next'
    assert _md_cell(Link("<b>x</b>", "f/dashboard.html")) == "[&lt;b&gt;x&lt;/b&gt;](f/dashboard.html)"
