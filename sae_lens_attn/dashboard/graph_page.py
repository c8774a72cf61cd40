"""Our attribution-graph page: one HTML file that opens from `file://`.

The graph JSON (`graph_json.graph_json`) is embedded in a `<script type=
"application/json">` tag (browsers refuse `fetch` under `file://`), written with
`script_safe_json`; the page draws it as SVG with no library: token positions left to
right, layers bottom to top (embeddings, then each layer's attention error, attention
features, MLP output or MLP error, and MLP SAE or transcoder features), the root on top. Hover a node for its token, layer, head,
activation and incoming DFA (per head); hover an edge for its weight and head terms; click
a feature for its dashboard or atlas page when `feature_url` (a template with `{layer}`
and `{feature}`) is given. Token text reaches the DOM as text only (`textContent`).
"""

from __future__ import annotations

from typing import Any

from sae_lens_attn.dashboard.page import script_safe_json

PAGE_NAME = "graph.html"


def graph_page(data: dict[str, Any], feature_url: str | None = None) -> str:
    """The page for circuit-tracer-format graph `data`; `feature_url` e.g.
    `atlas-L{layer}/feature.html#{feature}` (relative to the page) or an https URL."""
    settings = {"featureUrl": feature_url}
    return PAGE.replace("__DATA__", script_safe_json(data)).replace(
        "__SETTINGS__", script_safe_json(settings)
    )


PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Attribution graph</title>
<style>
body { font: 13px system-ui, sans-serif; margin: 16px; color: #222; }
#summary span { margin-right: 14px; }
#prompt .tok { background: #eef; border-radius: 3px; padding: 0 2px; margin-right: 2px; white-space: pre; }
svg { border: 1px solid #ddd; background: #fff; }
.node { cursor: pointer; stroke: #333; stroke-width: 0.6; }
.node.feature { fill: #8bb8e8; } .node.attn_error, .node.mlp, .node.mlp_error { fill: #bbb; }
.node.transcoder { fill: #c39bd3; } .node.mlp_feature { fill: #e6c2f0; }
.node.embedding, .node.position { fill: #9d9; } .node.logit, .node.root { fill: #f6b26b; }
.edge { fill: none; stroke-opacity: 0.55; }
.label { font-size: 10px; fill: #555; }
#tip { position: fixed; pointer-events: none; background: #fffbe6; border: 1px solid #cc9;
       padding: 6px 8px; font-size: 12px; max-width: 380px; display: none; white-space: pre-wrap; }
</style></head>
<body>
<h2>Attribution graph</h2>
<div id="summary"></div>
<p id="prompt"></p>
<p class="note">Edges: exact direct contributions through frozen attention patterns and
LayerNorm scales (blue raises, red lowers the target); the query/key side is not shown.
Hover for token, layer, head, DFA and activation; click a feature for its page.</p>
<svg id="graph"></svg>
<div id="tip"></div>
<script type="application/json" id="graph-data">__DATA__</script>
<script type="application/json" id="graph-settings">__SETTINGS__</script>
<script>
(function () {
  const data = JSON.parse(document.getElementById('graph-data').textContent);
  const settings = JSON.parse(document.getElementById('graph-settings').textContent);
  const info = data.metadata.info, tokens = data.metadata.prompt_tokens;
  const svgNS = 'http://www.w3.org/2000/svg';
  const el = (tag, attrs, parent) => {
    const e = document.createElementNS(svgNS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  };
  const fmt = x => (x === null || x === undefined) ? '-' : (+x).toFixed(4);
  const summary = document.getElementById('summary');
  [['root', info.root], ['value', fmt(info.root_value)],
   ['replacement', fmt(info.replacement_score) + ' (pruned ' + fmt(info.pruned_replacement_score) + ')'],
   ['completeness', fmt(info.completeness_score) + ' (pruned ' + fmt(info.pruned_completeness_score) + ')'],
   ['closure', (+info.closure_max_abs).toExponential(1)],
   ['nodes', data.nodes.length + ' of ' + info.n_nodes_total], ['edges', data.links.length]]
    .forEach(([k, v]) => { const s = document.createElement('span'); s.textContent = k + ': ' + v; summary.appendChild(s); });
  if (info.missing_layers.length) {
    const s = document.createElement('span');
    s.textContent = 'layers without an SAE (error nodes only): ' + info.missing_layers.join(', ');
    summary.appendChild(s);
  }
  const prompt = document.getElementById('prompt');
  tokens.forEach((t, i) => { const s = document.createElement('span'); s.className = 'tok'; s.title = 'position ' + i; s.textContent = t; prompt.appendChild(s); });

  // rows: E, then per layer: attention error, attention features, MLP output or error,
  // MLP SAE or transcoder features; the logit on top
  const ROW = {attn_error: 0, feature: 1, mlp: 2, mlp_error: 2, mlp_feature: 3, transcoder: 3};
  const ROW_NAMES = ['err', 'attn', 'mlp', 'mlp feat'];
  const rowOf = n => {
    if (n.layer === 'E') return 0;
    if (n.kind === 'logit') return 1 + 4 * (+n.layer - 1);  // just above the last layer
    return 1 + 4 * (+n.layer) + ROW[n.kind];
  };
  const nRows = Math.max(...data.nodes.map(rowOf)) + 1;
  const colW = Math.max(70, Math.min(140, 1100 / tokens.length)), rowH = 46, left = 70, top = 30;
  const width = left + colW * tokens.length + 20, height = top + rowH * nRows + 40;
  const svg = document.getElementById('graph');
  svg.setAttribute('width', width); svg.setAttribute('height', height);
  const cells = {};
  data.nodes.forEach(n => { const key = rowOf(n) + ':' + n.ctx_idx; (cells[key] = cells[key] || []).push(n); });
  const byId = {};
  Object.values(cells).forEach(list => list.forEach((n, i) => {
    const spread = Math.min(colW - 16, 12 * (list.length - 1));
    n.x = left + colW * n.ctx_idx + colW / 2 + (list.length > 1 ? -spread / 2 + spread * i / (list.length - 1) : 0);
    n.y = top + rowH * (nRows - 1 - rowOf(n)) + rowH / 2;
    byId[n.node_id] = n;
  }));
  tokens.forEach((t, i) => { const label = el('text', {x: left + colW * i + colW / 2, y: height - 12, 'text-anchor': 'middle', class: 'label'}, svg); label.textContent = t.length > 12 ? t.slice(0, 11) + '…' : t; });
  for (let r = 0; r < nRows; r++) {
    const isLogit = data.nodes.some(n => n.kind === 'logit' && rowOf(n) === r);
    const name = r === 0 ? 'emb' : isLogit ? 'logit' : 'L' + Math.floor((r - 1) / 4) + ' ' + ROW_NAMES[(r - 1) % 4];
    const label = el('text', {x: 4, y: top + rowH * (nRows - 1 - r) + rowH / 2 + 4, class: 'label'}, svg);
    label.textContent = name;
  }
  const maxW = Math.max(1e-9, ...data.links.map(l => Math.abs(l.weight)));
  const incoming = {};
  const tip = document.getElementById('tip');
  const show = (event, text) => { tip.textContent = text; tip.style.display = 'block'; tip.style.left = (event.clientX + 14) + 'px'; tip.style.top = (event.clientY + 10) + 'px'; };
  const hide = () => { tip.style.display = 'none'; };
  const headText = l => l.heads ? '\n  heads: ' + l.heads.map(h => h.label + ' ' + (+h.weight).toFixed(4) + ' (' + (100 * h.weight / (l.weight || 1)).toFixed(0) + '%)').join(', ') : '';
  data.links.forEach(l => {
    const s = byId[l.source], t = byId[l.target];
    if (!s || !t) return;
    (incoming[l.target] = incoming[l.target] || []).push(l);
    const path = el('path', {class: 'edge', d: `M${s.x},${s.y} C${s.x},${(s.y + t.y) / 2} ${t.x},${(s.y + t.y) / 2} ${t.x},${t.y}`,
      stroke: l.weight >= 0 ? '#2a6fdb' : '#d9412b', 'stroke-width': 0.5 + 5 * Math.abs(l.weight) / maxW}, svg);
    path.addEventListener('mousemove', e => show(e, s.clerp + ' -> ' + t.clerp + '\nDFA (edge weight): ' + fmt(l.weight) + headText(l)));
    path.addEventListener('mouseleave', hide);
  });
  data.nodes.forEach(n => {
    const isRoot = n.node_id === info.root;
    const c = el('circle', {cx: n.x, cy: n.y, r: isRoot ? 8 : 5.5, class: 'node ' + n.kind + (isRoot ? ' root' : '')}, svg);
    c.dataset.nodeId = n.node_id;
    const lines = [n.clerp, 'token ' + JSON.stringify(n.token) + ' at position ' + n.ctx_idx, 'layer ' + n.layer];
    if (n.kind === 'feature') lines.push('head ' + n.clerp.split(' ')[0] + ' (decoder share ' + (100 * n.head_share).toFixed(0) + '%)', 'activation ' + fmt(n.activation));
    else if (n.kind === 'transcoder') lines.push('transcoder feature #' + n.sae_feature + ' (reads the MLP input, writes the MLP output)', 'activation ' + fmt(n.activation));
    else if (n.kind === 'mlp_feature') lines.push('MLP SAE feature #' + n.sae_feature + ' (a leaf: the MLP is not linear)', 'activation ' + fmt(n.activation));
    else if (n.kind !== 'logit') lines.push('write norm ' + fmt(n.activation));
    if (n.value !== null && n.value !== undefined) lines.push((n.kind === 'logit' ? 'logit ' : 'pre-activation ') + fmt(n.value) + ' = edges + bias ' + fmt(n.bias));
    const ins = (incoming[n.node_id] || []).slice().sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8);
    if (ins.length) lines.push('top incoming DFA:' + ins.map(l => '\n ' + fmt(l.weight) + '  ' + byId[l.source].clerp + headText(l)).join(''));
    if (n.kind === 'feature' && settings.featureUrl) lines.push('click: open its page');
    c.addEventListener('mousemove', e => show(e, lines.join('\n')));
    c.addEventListener('mouseleave', hide);
    if (n.kind === 'feature' && settings.featureUrl) {
      c.addEventListener('click', () => {
        const url = settings.featureUrl.split('{layer}').join(n.layer).split('{feature}').join(n.sae_feature);
        if (!/^javascript:/i.test(url)) window.open(url, '_blank');
      });
    }
  });
  document.body.dataset.graphNodes = String(data.nodes.length);
  document.body.dataset.graphEdges = String(data.links.length);
})();
</script>
</body></html>
"""
