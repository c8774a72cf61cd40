"""The frontier files: `frontier.csv`, `frontier.json`, `frontier.html` and `frontier.png`.

Four views of the same points (`training.frontier`): L0 against CE loss recovered and
against explained variance (one line per architecture and training length, log L0, the
rule of thumb L0 20 / CE 0.8 marked), the per-head view (each head's L0 and CE loss
recovered from the per-head evals, only that head spliced), and the equal-time view (CE
loss recovered at L0 20 against the seconds a run of the SAE alone takes, the budget
marked). The HTML page is one plotly figure with plotly.js inlined (`write_figure_html`),
so it opens from `file://` offline; every label goes through `plotly_text`. The PNG is
drawn with matplotlib. Every file is written atomically; `write_frontier` writes them all
or (on an error) none.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sae_lens_attn._atomic import atomic_path, atomic_write_text
from sae_lens_attn._safe_output import plotly_text, write_csv, write_figure_html
from sae_lens_attn.training.frontier import (
    PER_HEAD,
    RULE_OF_THUMB,
    FrontierLine,
    FrontierPoint,
    frontier_lines,
    frontier_summary,
    time_curves,
)

FILES = ("frontier.csv", "frontier.json", "frontier.html", "frontier.png")
CSV_COLUMNS = (
    "sweep",
    "name",
    "label",
    "family",
    "hook",
    "l0",
    "ce_loss_score",
    "explained_variance",
    "training_tokens",
    "training_seconds",
    "training_seconds_alone",
    "d_sae",
    "n_params",
)
TIME_VIEW_L0 = 20.0
TITLES = (
    "L0 vs CE loss recovered",
    "L0 vs explained variance",
    "per head: L0 vs CE loss recovered (that head spliced)",
    f"equal time: CE loss recovered at L0 {TIME_VIEW_L0:g} vs training seconds",
)
COLORS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)


def write_frontier(points: Sequence[FrontierPoint], out: str | Path) -> list[Path]:
    """All frontier files of `points` into `out` (created if needed); their paths."""
    out = Path(out)
    summary = frontier_summary(points)
    lines = frontier_lines(points)
    figure = frontier_figure(lines, points)  # built first: a failure here writes nothing
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FILES]
    write_csv(
        paths[0],
        [{column: getattr(point, column) for column in CSV_COLUMNS} for point in points],
        CSV_COLUMNS,
    )
    atomic_write_text(paths[1], json.dumps(summary, indent=1, allow_nan=False) + "\n")
    write_figure_html(figure, paths[2], include_plotlyjs=True)
    write_frontier_png(lines, points, paths[3])
    return paths


def _colors(lines: Sequence[FrontierLine]) -> dict[str, str]:
    labels = sorted({line.label for line in lines})
    return {label: COLORS[i % len(COLORS)] for i, label in enumerate(labels)}


def _dash(line: FrontierLine, lines: Sequence[FrontierLine]) -> int:
    """0 for an architecture's shortest training length, 1 for the next, ..."""
    lengths = sorted({other.training_tokens or 0 for other in lines if other.label == line.label})
    return lengths.index(line.training_tokens or 0)


def frontier_figure(lines: Sequence[FrontierLine], points: Sequence[FrontierPoint]) -> Any:
    """The plotly figure of the four views (labels escaped with `plotly_text`)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=[plotly_text(t) for t in TITLES],
        horizontal_spacing=0.08,
        vertical_spacing=0.12,
    )
    colors = _colors(lines)
    dashes = ("solid", "dash", "dot", "dashdot")
    for line in lines:
        hover = [
            plotly_text(f"{p.name}: L0 {p.l0:.1f}, tokens {p.training_tokens}, {_seconds(p)}")
            for p in line.points
        ]
        style = {"color": colors[line.label], "dash": dashes[_dash(line, lines) % len(dashes)]}
        for col, metric in ((1, "ce_loss_score"), (2, "explained_variance")):
            figure.add_trace(
                go.Scatter(
                    x=[p.l0 for p in line.points],
                    y=[getattr(p, metric) for p in line.points],
                    mode="lines+markers",
                    name=plotly_text(line.name),
                    legendgroup=plotly_text(line.name),
                    showlegend=col == 1,
                    line=style,
                    text=hover,
                    hovertemplate="%{text}<br>%{y:.3f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    for label, color in colors.items():
        heads = [
            (p, head, values)
            for p in points
            if p.label == label
            for head, values in p.heads.items()
            if "l0" in values and "ce_loss_recovered" in values
        ]
        if heads:
            figure.add_trace(
                go.Scatter(
                    x=[v["l0"] for _, _, v in heads],
                    y=[v["ce_loss_recovered"] for _, _, v in heads],
                    mode="markers",
                    name=plotly_text(f"{label} (heads)"),
                    marker={"color": color, "symbol": "circle-open"},
                    text=[plotly_text(f"{p.name} {head}") for p, head, _ in heads],
                    hovertemplate="%{text}<br>L0 %{x:.2f}, CE %{y:.3f}<extra></extra>",
                ),
                row=2,
                col=1,
            )
    for label, curve in time_curves(lines, TIME_VIEW_L0).items():
        figure.add_trace(
            go.Scatter(
                x=[s for s, _ in curve],
                y=[ce for _, ce in curve],
                mode="lines+markers",
                showlegend=False,
                name=plotly_text(label),
                line={"color": colors[label]},
                hovertemplate=plotly_text(label) + "<br>%{x:.0f} s, CE %{y:.3f}<extra></extra>",
            ),
            row=2,
            col=2,
        )
    budget = frontier_summary_budget(lines)
    if budget is not None:
        figure.add_vline(
            x=budget,
            line={"color": "#555", "dash": "dot"},
            row=2,
            col=2,
            annotation_text=plotly_text(f"budget {budget:.0f} s"),
        )
    figure.add_vline(x=RULE_OF_THUMB["l0"], line={"color": "#999", "dash": "dot"}, row=1, col=1)
    for row, col in (
        (1, 1),
        (2, 1),
    ):  # per head: the CE line only (the L0 rule is for the whole SAE)
        figure.add_hline(
            y=RULE_OF_THUMB["ce_loss_score"],
            line={"color": "#999", "dash": "dot"},
            row=row,
            col=col,
            annotation_text=plotly_text("rule of thumb: L0 20, CE 0.8"),
        )
    for col in (1, 2):
        figure.update_xaxes(type="log", title_text="L0 (active features per token)", row=1, col=col)
    figure.update_xaxes(type="log", title_text="per-head L0", row=2, col=1)
    figure.update_xaxes(type="log", title_text="training seconds (SAE alone)", row=2, col=2)
    figure.update_yaxes(title_text="CE loss recovered", row=1, col=1)
    figure.update_yaxes(title_text="explained variance", row=1, col=2)
    figure.update_yaxes(title_text="CE loss recovered (head)", row=2, col=1)
    figure.update_yaxes(title_text=f"CE loss recovered at L0 {TIME_VIEW_L0:g}", row=2, col=2)
    hook = points[0].hook if points else ""
    figure.update_layout(
        title=plotly_text(f"SAE frontier on {hook}"), height=950, template="plotly_white"
    )
    return figure


def frontier_summary_budget(lines: Sequence[FrontierLine]) -> float | None:
    """The equal-time budget of the time view (smallest at which every label has a value)."""
    curves = time_curves(lines, TIME_VIEW_L0)
    return max((curve[0][0] for curve in curves.values()), default=None)


def _seconds(point: FrontierPoint) -> str:
    return (
        "seconds n/a"
        if point.training_seconds_alone is None
        else f"{point.training_seconds_alone:.0f} s alone"
    )


def write_frontier_png(
    lines: Sequence[FrontierLine], points: Sequence[FrontierPoint], path: Path
) -> None:
    """The four views as one PNG (matplotlib, Agg), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _colors(lines)
    styles = ("-", "--", ":", "-.")
    fig, axes = plt.subplots(2, 2, figsize=(14, 10.5))
    for line in lines:
        style = styles[_dash(line, lines) % len(styles)]
        marker = "o" if line.family == PER_HEAD else "s"
        for ax, metric in ((axes[0, 0], "ce_loss_score"), (axes[0, 1], "explained_variance")):
            values = [
                (p.l0, getattr(p, metric)) for p in line.points if getattr(p, metric) is not None
            ]
            ax.plot(
                [x for x, _ in values],
                [y for _, y in values],
                style,
                marker=marker,
                color=colors[line.label],
                label=line.name if metric == "ce_loss_score" else None,
            )
    for label, color in colors.items():
        heads = [
            v
            for p in points
            if p.label == label
            for v in p.heads.values()
            if "l0" in v and "ce_loss_recovered" in v
        ]
        if heads:
            axes[1, 0].scatter(
                [v["l0"] for v in heads],
                [v["ce_loss_recovered"] for v in heads],
                facecolors="none",
                edgecolors=color,
                label=label,
            )
    for label, curve in time_curves(lines, TIME_VIEW_L0).items():
        axes[1, 1].plot(
            [s for s, _ in curve], [ce for _, ce in curve], "-o", color=colors[label], label=label
        )
    budget = frontier_summary_budget(lines)
    if budget is not None:
        axes[1, 1].axvline(budget, color="#555", linestyle=":", label=f"budget {budget:.0f} s")
    axes[0, 0].axvline(RULE_OF_THUMB["l0"], color="#999", linestyle=":")
    for ax in (
        axes[0, 0],
        axes[1, 0],
    ):  # per head: the CE line only (the L0 rule is for the whole SAE)
        ax.axhline(
            RULE_OF_THUMB["ce_loss_score"],
            color="#999",
            linestyle=":",
            label="rule of thumb (L0 20, CE 0.8)",
        )
    labels = ("L0", "L0", "per-head L0", "training seconds (SAE alone)")
    ylabels = (
        "CE loss recovered",
        "explained variance",
        "CE loss recovered (head)",
        f"CE loss recovered at L0 {TIME_VIEW_L0:g}",
    )
    for ax, title, xlabel, ylabel in zip(axes.flat, TITLES, labels, ylabels, strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"SAE frontier on {points[0].hook if points else ''}")
    fig.tight_layout()
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=90, format="png")
    plt.close(fig)
