"""Sweep outputs: CSV, plotly figures (HTML) and a markdown report with the estimates."""

from __future__ import annotations

import math
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sae_lens_attn._atomic import atomic_write_text
from sae_lens_attn._safe_output import write_figure_html
from sae_lens_attn.toy.estimate import (
    SizeEstimate,
    estimate_from_dead_latents,
    estimate_from_dictionary_mmcs,
)
from sae_lens_attn.toy.sweep import SweepResult


def _groups(result: SweepResult) -> list[tuple[str, float]]:
    return [(a, l1) for a in result.config.architectures for l1 in result.config.l1_coefficients]


def _line_figure(result: SweepResult, column: str, title: str, y_title: str) -> go.Figure:
    figure = go.Figure()
    for architecture, l1 in _groups(result):
        runs = result.group(architecture, l1)
        figure.add_trace(
            go.Scatter(
                x=[run.d_sae for run in runs],
                y=[run.to_row()[column] for run in runs],
                mode="lines+markers",
                name=f"{architecture}, l1={l1:g}",
                line={"dash": "solid" if architecture == "block_diagonal" else "dot"},
            )
        )
    figure.add_vline(
        x=result.toy.cfg.n_features,
        line_dash="dash",
        line_color="gray",
        annotation_text=f"true features: {result.toy.cfg.n_features}",
    )
    figure.update_layout(title=title, xaxis_title="dictionary size (d_sae)", yaxis_title=y_title)
    figure.update_xaxes(type="log")
    return figure


def mmcs_vs_size_figure(result: SweepResult) -> go.Figure:
    """MMCS(true, learned) against dictionary size, one line per architecture and L1."""
    return _line_figure(result, "mmcs", "Recovery of the true features", "MMCS(true, learned)")


def dead_share_vs_size_figure(result: SweepResult) -> go.Figure:
    """Share of dead latents against dictionary size, one line per architecture and L1."""
    return _line_figure(result, "dead_share", "Dead latents", "share of latents never firing")


def dictionary_mmcs_figure(result: SweepResult) -> go.Figure:
    """Heatmaps (rows: architectures, columns: L1) of MMCS between live dictionaries."""
    architectures, l1s = result.config.architectures, result.config.l1_coefficients
    figure = make_subplots(
        rows=len(architectures),
        cols=len(l1s),
        subplot_titles=[f"{a}, l1={l1:g}" for a in architectures for l1 in l1s],
    )
    for row, architecture in enumerate(architectures, start=1):
        for col, l1 in enumerate(l1s, start=1):
            labels = [str(run.d_sae) for run in result.group(architecture, l1)]
            matrix = result.dictionary_mmcs(architecture, l1)
            figure.add_trace(
                go.Heatmap(
                    z=matrix.tolist(),
                    x=labels,
                    y=labels,
                    zmin=0,
                    zmax=1,
                    colorscale="Viridis",
                    text=[[f"{v:.2f}" for v in r] for r in matrix.tolist()],
                    texttemplate="%{text}",
                    showscale=row == 1 and col == 1,
                ),
                row=row,
                col=col,
            )
            figure.update_xaxes(title_text="reproduced by size", type="category", row=row, col=col)
            figure.update_yaxes(title_text="rows of size", type="category", row=row, col=col)
    figure.update_layout(title="MMCS between dictionaries (live latents)")
    return figure


def size_estimates(result: SweepResult, threshold: float = 0.9) -> dict[tuple[str, float], list[SizeEstimate]]:
    """Both estimates (`estimate.py`) for every architecture and L1 coefficient."""
    estimates = {}
    for architecture, l1 in _groups(result):
        runs = result.group(architecture, l1)
        sizes = [run.d_sae for run in runs]
        found = [estimate_from_dead_latents(sizes, [int(run.evaluation.alive.sum()) for run in runs])]
        if len(sizes) > 1:
            matrix = result.dictionary_mmcs(architecture, l1)
            found.append(estimate_from_dictionary_mmcs(sizes, matrix, threshold))
        estimates[(architecture, l1)] = found
    return estimates


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def markdown_report(result: SweepResult, figures: dict[str, str], threshold: float = 0.9) -> str:
    """The report: setup, recovery table, estimates next to the truth, same-parameter
    comparison and, when the toy has them, how multi-head features fare."""
    cfg, training = result.toy.cfg, result.config.training
    n_multi = cfg.n_multi_head_features
    probabilities = result.toy.synthetic_model.activation_generator.firing_probabilities
    lines = [
        "# Toy ground truth: multi-head dictionary-size sweep",
        "",
        f"- data: {cfg.n_heads} heads x d_head {cfg.d_head} (d_in {cfg.d_in})",
        f"- true features: **{cfg.n_features}** ({cfg.n_features - n_multi} single-head, "
        f"{n_multi} spanning {cfg.heads_per_multi_head_feature} heads)",
        f"- expected active features per sample: {float(probabilities.sum()):.2f} "
        f"(firing probabilities {float(probabilities.min()):.4f} to {float(probabilities.max()):.4f}, "
        f"{type(cfg.firing_probability_config()).__name__}); correlation: {cfg.correlation}",
        f"- training (SAELens SyntheticSAERunner): {training.training_samples} samples, batch "
        f"{training.batch_size}, lr {training.lr:g}, seed {training.seed}; evaluation on "
        f"{result.config.eval_samples} fresh samples",
        "",
        "## Recovery",
        "",
        *_table(
            ["architecture", "l1", "d_sae", "params", "MMCS", "MMCS single-head",
             "MMCS multi-head", "split MMCS multi-head", "dead share", "L0", "expl. var."],
            [
                [run.architecture, f"{run.l1_coefficient:g}", str(run.d_sae), str(run.n_params),
                 _fmt(ev.mmcs), _fmt(ev.mmcs_single_head), _fmt(ev.mmcs_multi_head),
                 _fmt(ev.split_mmcs_multi_head), _fmt(ev.dead_share), f"{ev.sae_l0:.2f}",
                 _fmt(ev.explained_variance)]
                for run in result.runs
                for ev in [run.evaluation]
            ],
        ),
        "",
        "## Estimated number of features",
        "",
        *_table(
            ["architecture", "l1", "by dead latents", "by MMCS between dictionaries", "true"],
            [
                [a, f"{l1:g}", *(str(e) for e in found), *(["n/a"] * (2 - len(found))),
                 str(cfg.n_features)]
                for (a, l1), found in size_estimates(result, threshold).items()
            ],
        ),
        "",
        "Rules. *Dead latents*: the number of live latents (fired at least once on the "
        "evaluation samples) of the largest dictionary; a lower bound (`>=`) if fewer than 5% "
        "of its latents are dead. *MMCS between dictionaries*: the smallest size whose live "
        "decoder rows reproduce those of the next larger dictionary with MMCS >= "
        f"{threshold:g}; `> n` when no size does.",
        *_same_params_section(result),
        *_multi_head_section(result),
        "",
        "## Figures",
        "",
        *(f"- [{name}]({path})" for name, path in figures.items()),
        "",
    ]
    return "\n".join(lines)


def _same_params_section(result: SweepResult) -> list[str]:
    """Block-diagonal SAEs next to dense ones with n_heads x fewer latents (same
    parameter count), where the sweep has both."""
    n_heads = result.toy.cfg.n_heads
    rows = []
    for block in result.runs:
        if block.architecture != "block_diagonal":
            continue
        for dense in result.runs:
            if (dense.architecture, dense.l1_coefficient) == ("standard", block.l1_coefficient) \
                    and dense.d_sae * n_heads == block.d_sae:
                rows.append([f"{block.l1_coefficient:g}", str(block.d_sae), _fmt(block.evaluation.mmcs),
                             str(dense.d_sae), _fmt(dense.evaluation.mmcs)])
    if not rows:
        return []
    return [
        "",
        "## Same parameter count",
        "",
        *_table(["l1", "block_diagonal d_sae", "MMCS", "standard d_sae (same params)", "MMCS"], rows),
    ]


def _multi_head_section(result: SweepResult) -> list[str]:
    cfg = result.toy.cfg
    n_multi = cfg.n_multi_head_features
    if n_multi == 0:
        return []
    ceiling = 1 / math.sqrt(cfg.heads_per_multi_head_feature)
    lines = [
        "",
        "## Multi-head features",
        "",
        f"A block-diagonal latent lives in one head, so its cosine with a feature spread "
        f"equally over {cfg.heads_per_multi_head_feature} heads is at most "
        f"1/sqrt({cfg.heads_per_multi_head_feature}) = {ceiling:.3f}: such features can only "
        "be recovered split across heads. *Split MMCS* scores the best one-latent-per-head "
        "combination. Held as pieces, the features need "
        f"{cfg.n_features - n_multi} + {cfg.heads_per_multi_head_feature} x {n_multi} = "
        f"{cfg.n_features + (cfg.heads_per_multi_head_feature - 1) * n_multi} block-diagonal "
        f"latents, against {cfg.n_features} dense ones.",
        "",
    ]
    for architecture in result.config.architectures:
        runs = [run for run in result.runs if run.architecture == architecture]
        best = max(runs, key=lambda run: run.evaluation.mmcs_multi_head)
        ev = best.evaluation
        lines.append(
            f"- {architecture}: best multi-head MMCS {_fmt(ev.mmcs_multi_head)} "
            f"(d_sae {best.d_sae}, l1 {best.l1_coefficient:g}; single-head "
            f"{_fmt(ev.mmcs_single_head)}, split MMCS multi-head {_fmt(ev.split_mmcs_multi_head)})"
        )
    return lines


def write_report(result: SweepResult, out_dir: Path, threshold: float = 0.9) -> dict[str, Path]:
    """Write `sweep.csv`, three HTML figures (plotly.js copied once next to them, so
    they open offline) and `report.md` into `out_dir`; return their paths by name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"table": result.write_csv(out_dir / "sweep.csv")}
    figures = {
        "mmcs_vs_size": mmcs_vs_size_figure(result),
        "dead_share_vs_size": dead_share_vs_size_figure(result),
        "dictionary_mmcs": dictionary_mmcs_figure(result),
    }
    for name, figure in figures.items():
        paths[name] = write_figure_html(figure, out_dir / f"{name}.html", "directory")
    paths["report"] = out_dir / "report.md"
    atomic_write_text(
        paths["report"], markdown_report(result, {name: f"{name}.html" for name in figures}, threshold)
    )
    return paths
