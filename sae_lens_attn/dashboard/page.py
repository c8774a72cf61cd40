"""One self-contained HTML page: sae_dashboard's feature-centric view plus our panels.

sae_dashboard writes the page (`HTML.get_html`); we post-process its text, checking that
every piece we touch is found exactly as expected (else a clear error names the
sae_dashboard version):

- the d3 v6 and plotly `<script src=CDN>` tags become inline scripts (vendored d3, the
  plotly.js shipped with the `plotly` package), so the page opens offline;
- its embedded data gets `<`, `>`, `&` written as `\\u003c`-style escapes (same JSON value),
  so a token like `</script>` cannot end the script element;
- its token tooltips and histogram annotations put token strings through `innerHTML`
  (`tokenScript.js`); we wrap those three places in `slaEscape`, so a token renders as text.

Then our per-feature panel sections, CSS and script are added to the same page.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from sae_lens_attn.dashboard.panels import esc

if TYPE_CHECKING:
    from sae_dashboard.sae_vis_data import SaeVisData

VENDOR_DIR = Path(__file__).parent / "vendor"
D3_FILE, PLOTLY_FILE = "d3.v6.min.js", "plotly.min.js"
D3_CDN_TAG = '<script src="https://d3js.org/d3.v6.min.js"></script>'
PLOTLY_CDN_TAG = '<script src="https://cdn.plot.ly/plotly-latest.min.js"></script>'
# how sae_dashboard's page starts itself, and the start function of a deferred page
SAE_DASHBOARD_START = 'document.addEventListener("DOMContentLoaded", function(event) {'
DEFERRED_START = "window.slaStartSaeVis = (function(event) {"
# sae_dashboard's tokenScript.js: places where a token string is parsed as HTML
TOKEN_HTML_SINKS = {
    "<code>${tok}</code>": ("<code>${slaEscape(tok)}</code>", 3),
    "`|${tok}|<br>": ("`|${slaEscape(tok)}|<br>", 1),
}

PAGE_CSS = """
/* sae_dashboard's columns wrap onto new rows instead of running off a narrow window */
.grid-container { display: flex; flex-wrap: wrap; align-items: flex-start; row-gap: 24px;
  overflow-x: hidden; white-space: normal; }
.grid-column { max-width: calc(100vw - 90px); }
#sla-panels { margin: 24px 16px; font-family: system-ui, -apple-system, "Segoe UI", sans-serif;
  overflow-wrap: anywhere; }
.sla-feature > h2 { font-size: 18px; margin: 0 0 12px; }
.sla-grid { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.sla-panel { flex: 1 1 340px; min-width: min(300px, 100%); max-width: 100%; box-sizing: border-box; border: 1px solid #ddd; border-radius: 6px;
  padding: 10px 14px; box-shadow: 0 1px 3px rgba(0,0,0,.08); background: #fff; }
.sla-panel.sla-wide { flex-basis: 100%; }
.sla-panel > h3 { margin: 0 0 8px; font-size: 14px; text-transform: uppercase; }
.sla-note { color: #555; font-size: 12px; margin: 4px 0 8px; }
.sla-failed { border-color: #d62728; }
.sla-example { margin: 6px 0 12px; }
.sla-caption { font-size: 12px; color: #333; margin-bottom: 3px; }
.sla-tokens { line-height: 1.9; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.sla-tok { position: relative; display: inline-block; max-width: 100%; white-space: pre-wrap;
  word-break: break-all; padding: 1px 1px; border-radius: 2px; cursor: default; }
.sla-tok.sla-dest { font-weight: bold; outline: 1.5px solid #111; }
.sla-tok:hover::after { content: attr(data-tip); position: absolute; left: 0; top: 1.7em;
  z-index: 20; white-space: pre; background: #222; color: #fff; padding: 4px 7px;
  border-radius: 4px; font-size: 11px; line-height: 1.4; font-weight: normal; }
.sla-more { color: #999; }
.sla-panel table { margin: 0; border-collapse: collapse; max-width: 100%; }
.sla-panel td, .sla-panel th { white-space: normal; }  /* sae_dashboard sets td nowrap */
.sla-stats td, .sla-families td, .sla-families th, .sla-tokens-table td, .sla-tokens-table th
  { padding: 2px 8px; font-size: 12px; text-align: left; border-bottom: 1px solid #eee; }
.sla-token-tables { display: flex; gap: 12px; margin-top: 8px; }
.sla-token-tables table { flex: 1 1 0; min-width: 0; }
.sla-token { white-space: pre-wrap; word-break: break-all; background: #f3f3f3; padding: 0 3px;
  border-radius: 2px; }
.sla-member { color: #0a7d28; font-weight: bold; }
.sla-nonmember { color: #777; }
"""

PAGE_SCRIPT = """
function slaEscape(text) {
    const entities = {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'};
    return String(text).replace(/[&<>"']/g, c => entities[c]);
}
function slaDrawFigures(section) {
    section.querySelectorAll('.sla-plotly:not([data-drawn])').forEach(div => {
        const figure = JSON.parse(div.dataset.figure);
        div.dataset.drawn = '1';
        Plotly.newPlot(div, figure.data, figure.layout || {}, {displayModeBar: false, responsive: true});
    });
}
(function () {
    const START_KEY = __START_KEY__;
    function currentKey() {
        const selects = document.querySelectorAll('#dropdown-container select');
        return selects.length ? Array.from(selects, s => s.value).join('|') : START_KEY;
    }
    function show(key) {
        document.querySelectorAll('.sla-feature').forEach(section => {
            section.hidden = section.dataset.featureKey !== key;
            if (!section.hidden) slaDrawFigures(section);
        });
    }
    document.addEventListener('change', event => {
        if (event.target.closest && event.target.closest('#dropdown-container')) show(currentKey());
    });
    document.addEventListener('DOMContentLoaded', () => show(currentKey()));
})();
"""


def script_safe_json(data: object) -> str:
    """`json.dumps(data)` safe inside `<script>`: `<`, `>`, `&` as `\\u003c`-style escapes."""
    return _script_safe(json.dumps(data))


def _script_safe(text: str) -> str:
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _replace_exactly(page: str, old: str, new: str, count: int) -> str:
    found = page.count(old)
    if found != count:
        raise RuntimeError(
            f"sae_dashboard {version('sae-dashboard')} wrote a page this renderer does not "
            f"know: expected {count} occurrence(s) of {old[:60]!r}, found {found}"
        )
    return page.replace(old, new)


def sae_dashboard_js_data(
    sae_vis_data: SaeVisData, decode: Callable[[int], str]
) -> tuple[dict, dict[str, dict]]:
    """`(html_data, {feature key: js_data})`: what sae_dashboard's
    `save_feature_centric_vis` puts on its page, per feature (one HTML object each, as
    `FeatureData._get_html_data_feature_centric` builds it with our `decode`), and the
    HTML skeleton, which is the same for every feature of one layout."""

    def decode_fn(token_ids: int | list[int]) -> str | list[str]:
        if isinstance(token_ids, int):
            return decode(token_ids)
        return [decode(int(token)) for token in token_ids]

    from sae_lens_attn.dashboard.sae_vis_speedups import fast_token_helpers

    layout = sae_vis_data.cfg.feature_centric_layout
    html_data: dict = {}
    js_data: dict[str, dict] = {}
    with fast_token_helpers():  # the same data, its per-token helpers made faster
        for feature, feature_data in sae_vis_data.feature_data_dict.items():
            html_obj = feature_data._get_html_data_feature_centric(layout, decode_fn)
            js_data[str(feature)] = html_obj.js_data
            html_data = html_data or html_obj.html_data
    return html_data, js_data


def sae_dashboard_page(
    sae_vis_data: SaeVisData,
    decode: Callable[[int], str],
    first_key: str,
    *,
    deferred: bool = False,
) -> str:
    """sae_dashboard's feature-centric page for all features, offline and token-safe.

    Builds the page as sae_dashboard's `save_feature_centric_vis` does (the HTML skeleton,
    `AGGDATA` + `DASHBOARD_DATA` from `sae_dashboard_js_data`), then post-processes it
    (see the module doc). `deferred`: the page holds no data and does not start itself;
    a script sets `window.slaSaeVisData` (`{AGGDATA, DASHBOARD_DATA}`) and calls
    `slaStartSaeVis()` (the atlas's feature page, whose data loads on demand); d3 and
    plotly.js load from files beside the page (`copy_page_libraries`), not inlined.
    """
    from plotly.offline import get_plotlyjs
    from sae_dashboard.html_fns import HTML

    layout = sae_vis_data.cfg.feature_centric_layout
    page_obj = HTML()
    page_obj.html_data, dashboard_data = sae_dashboard_js_data(sae_vis_data, decode)
    page_obj.js_data = {
        "AGGDATA": sae_vis_data.feature_stats.aggdata,
        "DASHBOARD_DATA": dashboard_data,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sae_dashboard.html"
        page_obj.get_html(layout.columns, layout.height, path, first_key)
        page = path.read_text(encoding="utf-8")

    raw_data = json.dumps(page_obj.js_data)
    if deferred:
        page = _replace_exactly(page, raw_data, "window.slaSaeVisData", 1)
        page = _replace_exactly(page, SAE_DASHBOARD_START, DEFERRED_START, 1)
    else:
        page = _replace_exactly(page, raw_data, _script_safe(raw_data), 1)
    if deferred:  # d3 and plotly.js as files beside the page (`copy_page_libraries`)
        page = _replace_exactly(page, D3_CDN_TAG, f'<script src="{D3_FILE}"></script>', 1)
        page = _replace_exactly(page, PLOTLY_CDN_TAG, f'<script src="{PLOTLY_FILE}"></script>', 1)
    else:
        d3 = (VENDOR_DIR / D3_FILE).read_text(encoding="utf-8")
        page = _replace_exactly(page, D3_CDN_TAG, f"<script>{d3}</script>", 1)
        page = _replace_exactly(page, PLOTLY_CDN_TAG, f"<script>{get_plotlyjs()}</script>", 1)
    for old, (new, count) in TOKEN_HTML_SINKS.items():
        page = _replace_exactly(page, old, new, count)
    return page


def copy_page_libraries(folder: Path) -> None:
    """d3 (vendored) and plotly.js (from the `plotly` package) into `folder`, each
    atomically: what a `deferred` page and the atlas's index load, offline."""
    from plotly.offline import get_plotlyjs

    from sae_lens_attn._atomic import atomic_write_bytes, atomic_write_text

    atomic_write_bytes(folder / D3_FILE, (VENDOR_DIR / D3_FILE).read_bytes())
    atomic_write_text(folder / PLOTLY_FILE, get_plotlyjs())


def feature_section(key: str, heading: str, panels: Sequence[tuple[str, str, str, bool]]) -> str:
    """One feature's panels `(name, title, html, wide)` in a section shown for `key`."""
    body = "".join(
        f'<div class="sla-panel{" sla-wide" if wide else ""}" data-panel="{esc(name)}">'
        f"<h3>{esc(title)}</h3>{html}</div>"
        for name, title, html, wide in panels
    )
    return (
        f'<section class="sla-feature" data-feature-key="{esc(key)}" hidden>'
        f'<h2>{esc(heading)}</h2><div class="sla-grid">{body}</div></section>'
    )


def assemble_page(
    sae_page: str, sections: Sequence[str], scripts: Sequence[str], first_key: str, title: str
) -> str:
    """The full document: sae_dashboard's view, then our sections, styles and scripts."""
    view, separator, rest = sae_page.partition("\n<style>\n")
    if not separator:
        raise RuntimeError(
            f"sae_dashboard {version('sae-dashboard')} wrote a page without its <style> block"
        )
    script = PAGE_SCRIPT.replace("__START_KEY__", script_safe_json(first_key))
    extra = "\n".join(scripts)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{esc(title)}</title>\n</head>\n<body>\n{view}\n"
        f'<div id="sla-panels">\n{"".join(sections)}\n</div>\n'
        f"<style>\n{rest}\n<style>{PAGE_CSS}</style>\n"
        f"<script>{script}\n{extra}</script>\n</body>\n</html>\n"
    )
