"""Families per attention head, from the taxonomy's rows.

`heads_table(rows)` -> `{"counts": {"L1H0": {class: n}}, "token_specific": {"L1H0": {class:
n}}, "fractional": {...} (dense SAEs only), "polysemanticity": {...}}`: each live feature
counts for the head holding most of its decoder norm (`evidence["head"]`), and in
`token_specific` too when its sub-label names tokens (`evidence["token_specific"]`); with
dense SAEs it also adds its decoder-norm fraction to every head
(`evidence["head_fractions"]`). A head's polysemanticity is the
number of classes holding at least `POLYSEMANTIC_SHARE` (10%) of its features; a head is
polysemantic when two or more classes do.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sae_lens_attn.detectors.classes import CLASSES, TAXONOMY, FamilyRow

if TYPE_CHECKING:
    import plotly.graph_objects as go


__all__ = ["POLYSEMANTIC_SHARE", "count_cell", "format_heads_table", "heads_figure", "heads_table"]

POLYSEMANTIC_SHARE = 0.1


def _head_order(label: str) -> tuple[int, int]:
    layer, _, head = label[1:].partition("H")
    return int(layer), int(head)


def heads_table(rows: Sequence[FamilyRow], detector: str = TAXONOMY) -> dict[str, Any]:
    """The per-head table of `detector`'s live rows (empty dict when there are none)."""
    live = [row for row in rows if row.detector == detector and row.live and row.family]
    if not live:
        return {}
    counts: dict[str, dict[str, int]] = {}
    specific: dict[str, dict[str, int]] = {}
    fractional: dict[str, dict[str, float]] = {}
    for row in live:
        head = row.evidence["head"]
        counts.setdefault(head, {})[row.family] = counts.get(head, {}).get(row.family, 0) + 1
        if row.evidence.get("token_specific"):
            specific.setdefault(head, {})[row.family] = specific.get(head, {}).get(row.family, 0) + 1
        for label, fraction in row.evidence.get("head_fractions", {}).items():
            if fraction <= 0:
                continue
            per_head = fractional.setdefault(label, {})
            per_head[row.family] = per_head.get(row.family, 0.0) + fraction
    order = {cls: i for i, cls in enumerate(CLASSES)}

    def tidy(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {head: dict(sorted(table[head].items(), key=lambda item: order.get(item[0], len(order))))
                for head in sorted(table, key=_head_order)}

    counts = tidy(counts)
    families_per_head = {
        head: sum(n >= POLYSEMANTIC_SHARE * sum(by_class.values()) for n in by_class.values())
        for head, by_class in counts.items()
    }
    polysemantic = [head for head, n in families_per_head.items() if n >= 2]
    table: dict[str, Any] = {
        "counts": counts,
        "token_specific": tidy(specific),
        "polysemanticity": {
            "min_share": POLYSEMANTIC_SHARE,
            "families_per_head": families_per_head,
            "polysemantic_heads": polysemantic,
            "share_polysemantic": len(polysemantic) / len(counts),
        },
    }
    if fractional:
        table["fractional"] = tidy({h: {c: round(v, 6) for c, v in f.items()} for h, f in fractional.items()})
    return table


def format_heads_table(
    table: dict[str, Any], head_evals: dict[str, dict[str, float]] | None = None
) -> tuple[list[tuple[str, ...]], tuple[str, ...]]:
    """`(rows, header)` for printing: one row per head, one column per class seen (a cell
    reads `n (s)` when `s` of its `n` features are token-specific), and with `head_evals`
    (`HeadEvals.to_dict()`) its explained variance, CE loss recovered, L0 and dead share."""
    seen = [cls for cls in CLASSES if any(cls in by_class for by_class in table["counts"].values())]
    poly = table["polysemanticity"]["families_per_head"]
    rows = [
        (head, *(count_cell(by_class.get(cls, 0), table.get("token_specific", {}).get(head, {}).get(cls, 0))
                 for cls in seen),
         str(sum(by_class.values())), str(poly[head]))
        for head, by_class in table["counts"].items()
    ]
    header = ("head", *seen, "features", "families >= 10%")
    if head_evals:
        from sae_lens_attn.attribution.head_evals import eval_columns, head_eval_cells

        columns = eval_columns(head_evals)
        blank = ("",) * len(columns)
        rows = [(*row, *(head_eval_cells(head_evals[row[0]]) if row[0] in head_evals else blank)) for row in rows]
        header = (*header, *columns)
    return rows, header


def count_cell(count: int, specific: int) -> str:
    """A table cell: `count`, with `(specific)` when some of them are token-specific."""
    return f"{count} ({specific})" if specific else str(count)


def heads_figure(table: dict[str, Any], title: str | None = None) -> go.Figure:
    """Plotly stacked bars: features of each class per head (labels escaped for plotly)."""
    import plotly.graph_objects as go

    heads = list(table["counts"])
    classes = [cls for cls in CLASSES if any(cls in table["counts"][h] for h in heads)]
    specific = table.get("token_specific", {})
    figure = go.Figure([
        go.Bar(name=html.escape(cls), x=[html.escape(h) for h in heads],
               y=[table["counts"][h].get(cls, 0) for h in heads],
               hovertext=[f"{specific.get(h, {}).get(cls, 0)} token-specific" for h in heads])
        for cls in classes
    ])
    poly = table["polysemanticity"]
    figure.update_layout(
        barmode="stack",
        title=html.escape(title or (f"Feature classes per head ({poly['share_polysemantic']:.0%} of heads "
                                    f"polysemantic: >= 2 classes with >= {poly['min_share']:.0%} of their features)")),
        xaxis_title="head (most of the feature's decoder norm)",
        yaxis_title="live features",
        template="plotly_white",
    )
    return figure
