"""The demo's `report.md` and `index.html`: the same tables in Markdown and in HTML.

The HTML page also draws per-head L0 and, for each SAE, the source-signature taxonomy per
head (stacked bars, from its `families.json`) as plotly charts (plotly.js inlined, so the
page opens offline) and links every dashboard and detector result.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

from sae_lens_attn._atomic import atomic_write_text
from sae_lens_attn._safe_output import markdown_text
from sae_lens_attn.dead import DEAD_TOKENS

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from sae_lens_attn.demo.result import DemoResult

SEED_INDUCTION_SHARE = 0.05  # Kissane et al. 2024: ~5% of live gelu-2l L1 features
REPORT_NAME = "report.md"
INDEX_NAME = "index.html"
SUMMARY_NAME = "summary.json"


@dataclass(frozen=True)
class Link:
    text: str
    href: str


Cell = Union[str, Link]


@dataclass(frozen=True)
class Table:
    title: str
    header: tuple[str, ...]
    rows: list[tuple[Cell, ...]]
    note: str = ""


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def metrics_table(result: DemoResult) -> Table:
    rows = []
    for sae in result.saes:
        m = sae.metrics
        rows.append((
            sae.architecture, str(sae.d_sae), _num(sae.activity.l0, 1),
            _num(m.get("explained_variance")), _num(m.get("ce_loss_score")),
            _pct(sae.activity.dead_share), f"{sae.live_count}",
            Link("SAE folder", f"{sae.folder.as_posix()}/sae"),
        ))
    return Table(
        f"SAEs on {result.model_summary['hook_name']}",
        ("architecture", "d_sae", "L0", "explained variance", "CE loss recovered",
         result.saes[0].activity.dead.label if result.saes else "dead", "live features", "files"),
        rows,
        "L0 (mean active features per token; the per-head table splits it) and features that "
        f"never fire on {result.settings.eval_sequences} held-out sequences of "
        f"{result.settings.context_size} tokens (called dead only from {DEAD_TOKENS:,} tokens on); "
        "explained variance and CE loss recovered "
        "from SAELens's evals (`run_evals`) on the first "
        f"{result.settings.eval_batches * result.settings.eval_batch_prompts} of them.",
    )


def per_head_table(result: DemoResult) -> Table:
    labels = result.saes[0].head_labels
    rows = [
        (label, *(f"{sae.activity.per_head_l0[i].item():.2f}" for sae in result.saes))
        for i, label in enumerate(labels)
    ]
    return Table(
        "Per-head L0", ("head", *(sae.architecture for sae in result.saes)), rows,
        "Mean active features per token, each counted towards the heads its decoder row "
        "lives in (one head for block-diagonal; split by decoder-norm fraction for dense), "
        "on the same tokens as the L0 above: the heads add up to it.",
    )


def head_evals_table(result: DemoResult) -> Table:
    from sae_lens_attn.attribution.head_evals import eval_columns, head_eval_cells

    rows = [(sae.architecture, head, *head_eval_cells(values), str(values["features"]))
            for sae in result.saes for head, values in sae.head_evals.items()]
    columns = eval_columns(result.saes[0].head_evals if result.saes else {})
    return Table(
        "Per-head evals", ("architecture", "head", *columns, "features"), rows,
        "Per head: explained variance (EV) of its slice of hook_z; CE loss recovered (CE rec.) when "
        "only that head's output is replaced by its reconstruction, against zero-ablating that head "
        "alone; L0 and the share of the features that belong to it (its block; for dense SAEs the "
        "head holding most of the feature's decoder norm) that never fire, counted on all held-out "
        "sequences as above; the rest on the same prompts as SAELens's evals.",
    )


def families_table(result: DemoResult) -> Table:
    rows = []
    for sae in result.saes:
        for detector, summary in sae.family_summary.items():
            for family, counts in summary["families"].items():
                rows.append((sae.architecture, detector, family, str(counts["count"]),
                             _pct(counts["share_of_live"])))
            if not summary["families"]:
                rows.append((sae.architecture, detector, "(no members)", "0", _pct(0.0)))
        for detector, error in sae.detector_errors.items():
            rows.append((sae.architecture, detector, f"failed: {error}", "", ""))
    return Table("Feature families", ("architecture", "detector", "family", "features",
                                      "share of live"), rows,
                 "From every installed detector plugin; full rows in each `families.json`.")


def induction_table(result: DemoResult) -> Table:
    rows = []
    for sae in result.saes:
        live = sae.family_summary.get("induction", {}).get("live", sae.live_count)
        share = len(sae.induction_features) / live if live else 0.0
        heads = ", ".join(f"{head} ({count})" for head, count in sae.induction_heads.items())
        rows.append((sae.architecture, str(len(sae.induction_features)), _pct(share),
                     _pct(SEED_INDUCTION_SHARE), heads or "none"))
    return Table('"<token> is next by induction" features',
                 ("architecture", "features", "share of live", "seed paper (gelu-2l L1)",
                  "carrying heads (features)"), rows,
                 "Kissane et al. (2024) found ~5% of live features of a gelu-2l layer-1 "
                 "hook_z SAE in this family.")


def outputs_table(result: DemoResult) -> Table:
    rows = []
    for sae in result.saes:
        dashboard: Cell = "not rendered"
        if sae.dashboard is not None:
            dashboard = Link(f"{len(sae.dashboard_features)} features", sae.dashboard.as_posix())
        rows.append((sae.architecture, dashboard,
                     Link("families.json", sae.families_json.as_posix()),
                     ", ".join(f"{k} {v:.0f}s" for k, v in sae.seconds.items())))
    return Table("Dashboards and results", ("architecture", "dashboard", "detector results",
                                            "time"), rows,
                 "Dashboards: the first live features round-robin over heads, plus every "
                 "induction-family feature.")


def load_head_tables(result: DemoResult, out: Path) -> dict[str, dict]:
    """`{architecture: families.json's heads, heads_fractional and head_polysemanticity}`
    for the SAEs whose detectors ran the taxonomy."""
    tables = {}
    for sae in result.saes:
        document = json.loads((Path(out) / sae.families_json).read_text(encoding="utf-8"))
        if "heads" in document:
            tables[sae.architecture] = {key: document[key] for key in
                                        ("heads", "heads_token_specific", "heads_fractional",
                                         "head_polysemanticity") if key in document}
    return tables


def taxonomy_table(head_tables: dict[str, dict]) -> Table:
    from sae_lens_attn.detectors.classes import CLASSES
    from sae_lens_attn.detectors.heads_table import count_cell

    rows = []
    for architecture, table in head_tables.items():
        poly = table["head_polysemanticity"]["families_per_head"]
        for head, by_class in table["heads"].items():
            specific = table.get("heads_token_specific", {}).get(head, {})
            rows.append((architecture, head, *(count_cell(by_class.get(cls, 0), specific.get(cls, 0))
                                               for cls in CLASSES), str(poly.get(head, 0))))
    return Table("Source-signature taxonomy per head", ("architecture", "head", *CLASSES,
                                                        "classes >= 10%"), rows,
                 "Each live feature gets one class (docs/taxonomy.md) and counts for the head holding "
                 "most of its decoder norm; in brackets: how many have a token-specific sub-label.")


def report_tables(result: DemoResult, head_tables: dict[str, dict] | None = None) -> list[Table]:
    tables = [metrics_table(result), per_head_table(result), head_evals_table(result), families_table(result),
              induction_table(result)]
    if head_tables:
        tables.append(taxonomy_table(head_tables))
    return [*tables, outputs_table(result)]


def _intro(result: DemoResult) -> list[str]:
    model = result.model_summary
    return [
        f"Model `{model['name']}`: {model['n_layers']} layers, d_model {model['d_model']}, "
        f"{model['n_heads']} heads x d_head {model['d_head']}, vocabulary {model['d_vocab']}. "
        f"SAEs on `{model['hook_name']}` trained with SAELens's runner on "
        f"{result.settings.training_tokens:,} tokens of the stdlib corpus.",
        f"Wall time: {result.seconds['total']:.0f} s.",
    ]


def _md_cell(cell: Cell) -> str:
    if isinstance(cell, Link):
        return f"[{markdown_text(cell.text)}]({cell.href})"
    return markdown_text(cell)


def to_markdown(result: DemoResult, tables: list[Table]) -> str:
    lines = ["# sae_lens_attn demo", "", *_intro(result), ""]
    for table in tables:
        lines += [f"## {markdown_text(table.title)}", "",
                  "| " + " | ".join(markdown_text(h) for h in table.header) + " |",
                  "|" + "---|" * len(table.header)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
        lines += ["", table.note, ""] if table.note else [""]
    return "\n".join(lines)


def _html_cell(cell: Cell) -> str:
    if isinstance(cell, Link):
        return f'<a href="{html.escape(cell.href)}">{html.escape(cell.text)}</a>'
    return html.escape(cell)


def per_head_l0_figure(result: DemoResult) -> go.Figure:
    import plotly.graph_objects as go

    figure = go.Figure([
        go.Bar(name=sae.architecture, x=sae.head_labels, y=sae.activity.per_head_l0.tolist())
        for sae in result.saes
    ])
    figure.update_layout(title="Per-head L0", barmode="group", xaxis_title="head",
                         yaxis_title="active features per token", height=380)
    return figure


def taxonomy_figures(head_tables: dict[str, dict]) -> list[go.Figure]:
    """One stacked-bar chart of classes per head for each SAE."""
    from sae_lens_attn.detectors.heads_table import heads_figure

    figures = []
    for architecture, table in head_tables.items():
        poly = table["head_polysemanticity"]
        figures.append(heads_figure(
            {"counts": table["heads"], "token_specific": table.get("heads_token_specific", {}),
             "polysemanticity": poly},
            title=f"{architecture}: taxonomy per head ({poly['share_polysemantic']:.0%} of heads polysemantic)",
        ))
    return figures


def to_html(result: DemoResult, tables: list[Table], head_tables: dict[str, dict] | None = None) -> str:
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             "<title>sae_lens_attn demo</title><style>body{font-family:sans-serif;"
             "max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
             ".note{color:#555;font-size:90%}</style></head><body>",
             "<h1>sae_lens_attn demo</h1>"]
    parts += [f"<p>{html.escape(line)}</p>" for line in _intro(result)]
    for table in tables:
        parts.append(f"<h2>{html.escape(table.title)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in table.header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>"
                  for row in table.rows]
        parts.append("</table>")
        if table.note:
            parts.append(f'<p class="note">{html.escape(table.note)}</p>')
    parts.append(per_head_l0_figure(result).to_html(full_html=False, include_plotlyjs=True))
    parts += [figure.to_html(full_html=False, include_plotlyjs=False)
              for figure in taxonomy_figures(head_tables or {})]
    parts.append("</body></html>")
    return "\n".join(parts)


def summary(result: DemoResult, head_tables: dict[str, dict] | None = None) -> dict:
    """The report's numbers as JSON-able data (`summary.json`)."""
    head_tables = head_tables or {}
    return {
        "model": result.model_summary,
        "seconds": result.seconds,
        "saes": [
            {
                "architecture": sae.architecture,
                "d_sae": sae.d_sae,
                "metrics": {k: v for k, v in sae.metrics.items() if isinstance(v, (int, float))},
                "l0": sae.activity.l0,
                "dead_share": sae.activity.dead_share,
                "dead_eval_tokens": sae.activity.n_tokens,
                "live_features": sae.live_count,
                "per_head_l0": dict(zip(sae.head_labels, sae.activity.per_head_l0.tolist(),
                                        strict=True)),
                "head_evals": sae.head_evals,
                "family_summary": sae.family_summary,
                "detector_errors": sae.detector_errors,
                "induction_features": sae.induction_features,
                "induction_heads": sae.induction_heads,
                "taxonomy": _taxonomy_summary(sae.family_summary, head_tables.get(sae.architecture)),
                "dashboard": None if sae.dashboard is None else sae.dashboard.as_posix(),
                "dashboard_features": sae.dashboard_features,
                "seconds": sae.seconds,
            }
            for sae in result.saes
        ],
    }


def _taxonomy_summary(family_summary: dict, head_table: dict | None) -> dict | None:
    """Class counts of the taxonomy and its per-head table (None when it did not run)."""
    if "taxonomy" not in family_summary:
        return None
    counts = {cls: stats["count"] for cls, stats in family_summary["taxonomy"]["families"].items()}
    return {"live": family_summary["taxonomy"]["live"], "classes": counts, **(head_table or {})}


def write_report(result: DemoResult, out: Path) -> tuple[Path, Path]:
    """Write `report.md`, `index.html` and `summary.json` into `out`."""
    out = Path(out)
    head_tables = load_head_tables(result, out)
    tables = report_tables(result, head_tables)
    report, index = out / REPORT_NAME, out / INDEX_NAME
    summary_text = json.dumps(summary(result, head_tables), indent=1, allow_nan=False)
    markdown, page = to_markdown(result, tables), to_html(result, tables, head_tables)
    atomic_write_text(out / SUMMARY_NAME, summary_text)
    atomic_write_text(report, markdown)
    atomic_write_text(index, page)
    return report, index
