"""The atlas's static files: `index.html`, `feature.html` and the data scripts they load.

Data files are JavaScript (`slaAtlasIndex({...})`, `slaAtlasShard({...})`) loaded with
`<script src>`, because browsers refuse `fetch` of files under `file://`: the site opens
from disk with no server. A shard maps each feature to its data as gzip-compressed JSON in
base64 (`packed_json`, a tenth of the size); the feature page loads its one shard and
unpacks its one feature with the browser's `DecompressionStream`. Their JSON is written by `script_safe_json` (`<`, `>`, `&` as
`\\u003c`-style escapes), and the pages put every token, class and family name into the
DOM as text (`textContent`), never as HTML; plotly labels get `&`, `<`, `>` escaped.
The feature page is sae_dashboard's page (`sae_dashboard_page(..., deferred=True)`) plus
our panels, filled in from the feature's shard when it has loaded.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens_attn._atomic import atomic_write_text
from sae_lens_attn.dashboard.page import (
    PLOTLY_FILE,
    assemble_page,
    copy_page_libraries,
    sae_dashboard_page,
    script_safe_json,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from sae_dashboard.sae_vis_data import SaeVisData

INDEX_NAME, FEATURE_NAME, DATA_DIR = "index.html", "feature.html", "data"
INDEX_DATA = "index.js"


def shard_name(shard: int) -> str:
    """The data script of shard `shard` (features `shard * size .. (shard + 1) * size - 1`)."""
    return f"features-{shard:05d}.js"


def rows_name(shard: int) -> str:
    """The index rows of shard `shard` (JSON; written last, so it marks the shard done)."""
    return f"rows-{shard:05d}.json"


def write_data_script(path: Path, function: str, data: Any) -> None:
    """`function(<data as script-safe JSON>);` into `path`, atomically."""
    atomic_write_text(path, f"{function}({script_safe_json(data)});\n")


def packed_json(data: Any) -> str:
    """`data` as JSON, gzip-compressed and base64-encoded: what a shard holds per feature,
    so the page decompresses (`DecompressionStream`) only the feature it shows. Non-finite
    floats become null (JSON has none); the bytes do not depend on the time (mtime 0)."""
    try:
        text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = json.dumps(_finite(data), allow_nan=False, separators=(",", ":"))
    packed = gzip.compress(text.encode("utf-8"), compresslevel=3, mtime=0)
    return base64.b64encode(packed).decode("ascii")


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def write_static_files(site: Path) -> None:
    """d3, plotly.js and `index.html` (the same for every atlas)."""
    copy_page_libraries(site)
    atomic_write_text(site / INDEX_NAME, INDEX_HTML.replace("__PLOTLY__", PLOTLY_FILE))


def write_feature_page(
    site: Path,
    sae_vis_data: SaeVisData,
    decode: Callable[[int], str],
    scripts: Sequence[str],
    shard_size: int,
) -> None:
    """`feature.html`: sae_dashboard's page (skeleton from `sae_vis_data`, data deferred),
    our panels' scripts and the loader of the shard that holds the feature in the URL."""
    first, first_data = next(iter(sae_vis_data.feature_data_dict.items()))
    one_feature = copy.copy(sae_vis_data)  # the skeleton is the same for every feature
    one_feature.feature_data_dict = {first: first_data}
    first_key = str(first)
    sae_page = sae_dashboard_page(one_feature, decode, first_key, deferred=True)
    loader = FEATURE_SCRIPT.replace("__SHARD_SIZE__", str(int(shard_size)))
    page = assemble_page(
        FEATURE_NAV + sae_page,
        [FEATURE_SECTION],
        [*scripts, loader],
        first_key,
        title="SAE atlas: feature",
    )
    atomic_write_text(site / FEATURE_NAME, page)


FEATURE_NAV = """<nav id="sla-atlas-nav" style="font-family: system-ui, sans-serif; margin: 8px 16px">
<a href="index.html">&larr; all features</a> <a id="sla-atlas-prev" href="#">previous</a>
<a id="sla-atlas-next" href="#">next</a> <b id="sla-atlas-heading"></b>
<span id="sla-atlas-status" class="sla-note"></span></nav>
"""
FEATURE_SECTION = '<section id="sla-atlas-feature"></section>'

FEATURE_SCRIPT = """
(function () {
    const SHARD_SIZE = __SHARD_SIZE__;
    const match = /^#(?:f=)?(\\d+)$/.exec(location.hash);
    const feature = match ? parseInt(match[1], 10) : NaN;
    const status = text => { document.getElementById('sla-atlas-status').textContent = text; };
    window.addEventListener('hashchange', () => location.reload());
    // each feature's data is gzip-compressed JSON in base64: only the one shown is unpacked
    async function unpack(packed) {
        const bytes = Uint8Array.from(atob(packed), c => c.charCodeAt(0));
        const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
        return JSON.parse(await new Response(stream).text());
    }
    window.slaAtlasShard = function (shard) {
        const packed = shard[String(feature)];
        if (!packed) { status('Feature ' + feature + ' is not in this atlas (dead, never fires on the prompts, or not selected).'); return; }
        unpack(packed).then(show, error => status('Feature ' + feature + ': its data could not be read (' + error + ').'));
    };
    function show(entry) {
        document.title = 'SAE atlas: feature ' + feature;
        document.getElementById('sla-atlas-heading').textContent = 'Feature ' + feature;
        for (const [id, target] of [['sla-atlas-prev', entry.prev], ['sla-atlas-next', entry.next]]) {
            const link = document.getElementById(id);
            if (target === null) link.hidden = true; else link.href = '#' + target;
        }
        window.slaSaeVisData = {AGGDATA: {}, DASHBOARD_DATA: {[String(feature)]: entry.sae_vis}};
        window.slaStartSaeVis();
        const section = document.getElementById('sla-atlas-feature');
        section.innerHTML = entry.panels;  // built by the panels, every text in it escaped
        section.querySelectorAll('.sla-feature').forEach(part => { part.hidden = false; });
        slaDrawFigures(section);
        document.body.dataset.atlasFeature = String(feature);
    }
    document.addEventListener('DOMContentLoaded', () => {
        if (!Number.isInteger(feature)) { status('No feature in the address: open feature.html#N from the index.'); return; }
        const script = document.createElement('script');
        script.src = 'data/features-' + String(Math.floor(feature / SHARD_SIZE)).padStart(5, '0') + '.js';
        script.onerror = () => status('Feature ' + feature + ' is not in this atlas (no data file ' + script.src + ').');
        document.head.appendChild(script);
    });
})();
"""

INDEX_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>SAE atlas</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 16px 24px; color: #222; }
h1 { font-size: 22px; margin: 0 0 6px; }
.note { color: #555; font-size: 13px; margin: 4px 0; }
#plots { display: flex; flex-wrap: wrap; gap: 16px; margin: 12px 0; }
.plot { flex: 1 1 460px; min-width: 320px; height: 320px; border: 1px solid #ddd; border-radius: 6px; }
#controls { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 12px 0; font-size: 13px; }
#controls input[type=search] { min-width: 260px; padding: 4px 6px; }
#controls input[type=number] { width: 90px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th { text-align: left; cursor: pointer; user-select: none; border-bottom: 2px solid #aaa; padding: 4px 8px;
  position: sticky; top: 0; background: #fafafa; }
th[data-order=asc]::after { content: " \\25B2"; } th[data-order=desc]::after { content: " \\25BC"; }
td { padding: 3px 8px; border-bottom: 1px solid #eee; vertical-align: top; }
tbody tr { cursor: pointer; } tbody tr:hover { background: #eef4ff; }
.tok { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap; word-break: break-all;
  background: #f3f3f3; border-radius: 2px; padding: 0 3px; margin-right: 4px; }
#more { margin: 10px 0; }
</style>
</head>
<body>
<h1 id="title">SAE atlas</h1>
<p id="meta" class="note"></p>
<p id="classes-note" class="note"></p>
<div id="plots"><div id="plot-class-head" class="plot"></div><div id="plot-density" class="plot"></div></div>
<div id="controls">
<input id="search" type="search" placeholder="search: tokens, class, family, head, feature">
<select id="filter-class"><option value="">every class</option></select>
<select id="filter-family"><option value="">every family</option></select>
<select id="filter-head"><option value="">every head</option></select>
<label>density &ge; <input id="min-density" type="number" step="any" min="0"></label>
<label>max activation &ge; <input id="min-max-act" type="number" step="any"></label>
<span id="count" class="note"></span>
</div>
<table id="features"><thead><tr>
<th data-key="feature">feature</th><th data-key="class">class</th><th data-key="families">families</th>
<th data-key="head">head</th><th data-key="density">density</th><th data-key="max_act">max activation</th>
<th data-key="top_tokens">top promoted tokens</th>
</tr></thead><tbody></tbody></table>
<button id="more" hidden>show more</button>
<script src="__PLOTLY__"></script>
<script>
const PAGE = 200;
let ROWS = [], shown = [], limit = PAGE, sortKey = 'feature', sortOrder = 'asc';
const $ = id => document.getElementById(id);
const plotlyText = text => String(text).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
function cell(row, text, className) {
    const td = document.createElement('td');
    if (className) td.className = className;
    td.textContent = text;
    row.appendChild(td);
    return td;
}
function sortValue(row, key) {
    const value = row[key];
    if (Array.isArray(value)) return value.join(' ');
    return value === null || value === undefined ? '' : value;
}
function searchText(row) {
    return [row.feature, row.class, row.head, ...row.families, ...row.top_tokens].join('\\n').toLowerCase();
}
function render() {
    const query = $('search').value.toLowerCase(), cls = $('filter-class').value;
    const family = $('filter-family').value, head = $('filter-head').value;
    const minDensity = parseFloat($('min-density').value), minAct = parseFloat($('min-max-act').value);
    shown = ROWS.filter(row => (!query || row.search.includes(query)) && (!cls || row.class === cls)
        && (!family || row.families.includes(family)) && (!head || row.head === head)
        && (isNaN(minDensity) || row.density >= minDensity) && (isNaN(minAct) || row.max_act >= minAct));
    const sign = sortOrder === 'asc' ? 1 : -1;
    shown.sort((a, b) => {
        const x = sortValue(a, sortKey), y = sortValue(b, sortKey);
        return (x < y ? -1 : x > y ? 1 : a.feature - b.feature) * sign;
    });
    const body = document.querySelector('#features tbody');
    body.replaceChildren();
    for (const row of shown.slice(0, limit)) {
        const tr = document.createElement('tr');
        tr.dataset.feature = row.feature;
        const link = document.createElement('a');
        link.href = 'feature.html#' + row.feature;
        link.textContent = String(row.feature);
        cell(tr, '').appendChild(link);
        cell(tr, row.class || '\\u2014');
        cell(tr, row.families.join(', '));
        cell(tr, row.head + ' (' + Math.round(100 * row.head_share) + '%)');
        cell(tr, row.density.toPrecision(3));
        cell(tr, row.max_act.toPrecision(4));
        const tokens = cell(tr, '');
        for (const token of row.top_tokens) {
            const span = document.createElement('span');
            span.className = 'tok';
            span.textContent = token;
            tokens.appendChild(span);
        }
        body.appendChild(tr);
    }
    $('count').textContent = 'showing ' + Math.min(limit, shown.length) + ' of ' + shown.length
        + ' matching features (' + ROWS.length + ' in the atlas)';
    $('more').hidden = shown.length <= limit;
}
function options(id, values) {
    for (const value of [...new Set(values)].sort()) {
        const option = document.createElement('option');
        option.value = value;
        option.textContent = value;
        $(id).appendChild(option);
    }
}
function plots(data) {
    const classes = [...new Set(ROWS.map(row => row.class || 'not classified'))].sort();
    const counts = classes.map(cls => data.heads.map(head =>
        ROWS.filter(row => (row.class || 'not classified') === cls && row.head === head).length));
    Plotly.newPlot('plot-class-head', [{type: 'heatmap', z: counts, x: data.heads.map(plotlyText),
        y: classes.map(plotlyText), colorscale: 'Blues', hovertemplate: '%{y} on %{x}: %{z} features<extra></extra>'}],
        {title: {text: 'features per class and head (head: most of the decoder norm)', font: {size: 13}},
         margin: {l: 140, r: 10, t: 40, b: 40}}, {displayModeBar: false, responsive: true});
    Plotly.newPlot('plot-density', [{type: 'histogram', x: ROWS.map(row => Math.log10(Math.max(row.density, 1e-10))),
        nbinsx: 40, marker: {color: '#3b6fb6'}}],
        {title: {text: 'feature density (log10 of the share of tokens it fires on)', font: {size: 13}},
         margin: {l: 50, r: 10, t: 40, b: 40}, xaxis: {title: {text: 'log10 density'}},
         yaxis: {title: {text: 'features'}}}, {displayModeBar: false, responsive: true});
}
function slaAtlasIndex(data) {
    ROWS = data.rows.map(row => Object.assign(row, {search: searchText(row)}));
    document.title = 'SAE atlas: ' + data.title;
    $('title').textContent = 'SAE atlas: ' + data.title;
    $('meta').textContent = data.meta;
    $('classes-note').textContent = data.classes_note;
    options('filter-class', ROWS.map(row => row.class).filter(Boolean));
    options('filter-family', ROWS.flatMap(row => row.families));
    options('filter-head', data.heads);
    for (const th of document.querySelectorAll('th')) th.addEventListener('click', () => {
        sortOrder = sortKey === th.dataset.key && sortOrder === 'asc' ? 'desc' : 'asc';
        sortKey = th.dataset.key;
        document.querySelectorAll('th').forEach(other => delete other.dataset.order);
        th.dataset.order = sortOrder;
        render();
    });
    for (const id of ['search', 'filter-class', 'filter-family', 'filter-head', 'min-density', 'min-max-act'])
        $(id).addEventListener('input', () => { limit = PAGE; render(); });
    $('more').addEventListener('click', () => { limit += PAGE; render(); });
    document.querySelector('#features tbody').addEventListener('click', event => {
        const tr = event.target.closest('tr');
        if (tr && !event.target.closest('a')) location.href = 'feature.html#' + tr.dataset.feature;
    });
    render();
    if (window.Plotly) plots(data);
    document.body.dataset.atlasRows = String(ROWS.length);
}
</script>
<script src="data/index.js"></script>
</body>
</html>
"""
