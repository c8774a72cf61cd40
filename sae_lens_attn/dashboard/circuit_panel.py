"""Circuit views of a feature: plotly figures and the dashboard panel.

`upstream_figure`: bar chart of the largest upstream contributions (by source position
and residual component, summed over heads). `effects_figure`: direct vs total logit
effect per token for the tokens the feature promotes most. `CircuitPanel`: the upstream
bar chart for each feature's top example, computed in `prepare`: one batched forward pass
per `prompts_per_pass` top-example prompts, stopping after the SAE's layer, and only the
shown features' columns of the encoder (`circuit_contexts`); a prompt's context serves
every feature whose top example it is.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sae_lens_attn._safe_output import plotly_text, plotly_texts
from sae_lens_attn.dashboard.panels import DashboardPanel, PanelOutput, esc, plotly_div
from sae_lens_attn.models.token_display import quoted
from sae_lens_attn.sources.head_layout import head_label

if TYPE_CHECKING:
    from sae_lens_attn.attribution.circuit.feature import Decode, FeatureCircuit
    from sae_lens_attn.dashboard.panels import DashboardContext, FeatureReport


def upstream_figure(circuit: FeatureCircuit, decode: Decode = str, top: int = 20) -> dict[str, Any]:
    """Horizontal bars: the `top` (source, component) contributions to the pre-activation,
    as a plain plotly figure dict (building a `go.Figure` validates and copies plotly's
    template, ~50 ms a figure, which a dashboard of thousands of features pays in full)."""
    from sae_lens_attn.attribution.circuit.feature import component_totals

    totals = component_totals(circuit, decode)[:top][::-1]
    value = circuit.value
    token = decode(int(circuit.tokens[circuit.destination]))
    title = (
        f"Feature {circuit.feature} at position {circuit.destination} "
        f"({plotly_text(quoted(token))}): "
        f"top upstream contributions<br><sub>pre-activation {value.pre_activation:.3f} = "
        f"all sources {value.dfa.sum().item():.3f} + b_dec centring {value.centring:.3f} "
        f"+ b_enc {value.b_enc:.3f}</sub>"
    )
    bar = {
        "type": "bar",
        "x": [total for _, total in totals],
        "y": plotly_texts(label for label, _ in totals),
        "orientation": "h",
        "marker": {"color": ["#1f77b4" if total >= 0 else "#d62728" for _, total in totals]},
    }
    layout = {
        "title": {"text": title},
        "xaxis": {"title": {"text": "contribution to the pre-activation"}},
        "height": 200 + 22 * len(totals),
        "margin": {"l": 260},
    }
    return {"data": [bar], "layout": layout}


def effects_figure(circuit: FeatureCircuit, decode: Decode = str, k: int = 10) -> dict[str, Any]:
    """Grouped bars per token, as a plotly figure dict: direct and total logit effect of the
    feature at its destination (tokens promoted most directly, then most in total)."""
    from sae_lens_attn.attribution.circuit.feature import downstream_rows

    rows = downstream_rows(circuit, k, decode)
    labels = plotly_texts(quoted(row["token"]) for row in rows)
    bars = [
        {"type": "bar", "name": kind, "x": labels, "y": [row[kind] for row in rows]}
        for kind in ("direct", "total")
    ]
    layout = {
        "barmode": "group",
        "title": {
            "text": f"Feature {circuit.feature}: direct vs total effect on the logits at "
            f"position {circuit.destination} (ablating the feature)"
        },
        "yaxis": {"title": {"text": "logit(clean) - logit(feature ablated)"}},
    }
    return {"data": bars, "layout": layout}


class CircuitPanel(DashboardPanel):
    """Top upstream residual components (value side) of the feature's top example."""

    name = "circuit"
    title = "Circuit: upstream components"
    wide = True
    n_sources = 3
    n_bars = 15
    prompts_per_pass = 16  # prompts per batched forward pass (memory: one chunk's cache)

    def __init__(self) -> None:
        self.circuits: dict[int, FeatureCircuit] = {}

    def prepare(self, context: DashboardContext, reports: Sequence[FeatureReport]) -> None:
        from sae_lens_attn.attribution.circuit.context import circuit_contexts
        from sae_lens_attn.attribution.circuit.feature import circuit_from_context

        self.circuits = {}  # only these reports' circuits: a long run renders many batches
        by_prompt: dict[int, list[FeatureReport]] = defaultdict(list)
        for report in reports:
            if report.examples:
                by_prompt[report.examples[0].prompt_index].append(report)
        prompts = sorted(by_prompt)
        for start in range(0, len(prompts), self.prompts_per_pass):
            chunk = prompts[start : start + self.prompts_per_pass]
            features = sorted({r.feature for prompt in chunk for r in by_prompt[prompt]})
            try:
                contexts = circuit_contexts(
                    context.model, context.sae, context.tokens[chunk], context.layout, features
                )
                for prompt, circuit_ctx in zip(chunk, contexts, strict=True):
                    for report in by_prompt[prompt]:
                        self.circuits[report.feature] = circuit_from_context(
                            circuit_ctx,
                            context.tokens[prompt],
                            report.feature,
                            report.examples[0].dest,
                            self.n_sources,
                        )
            except ValueError as err:  # a model the decomposition does not cover
                warnings.warn(f"circuit panel: prompts {chunk} skipped: {err}", stacklevel=2)

    def render(self, report: FeatureReport, context: DashboardContext) -> PanelOutput | None:
        from sae_lens_attn.attribution.circuit.feature import circuit_summary

        circuit = self.circuits.get(report.feature)
        if circuit is None:
            return None
        summary = circuit_summary(circuit, k=self.n_bars, decode=context.decode)
        qk = circuit.query_key
        note = (
            f"Top example, position {circuit.destination}: the pre-activation "
            f"{summary['pre_activation']:.3f} (of the SAE as given) split into what each "
            "residual-stream component at the top source positions writes through the frozen "
            "LayerNorm, W_V and the encoder, summed over heads."
        )
        if qk is not None:
            top_key = qk.key_labels[int(qk.key_totals.argmax())]
            note += (
                f" {head_label(context.layout.layer, qk.head)} attends from it to position "
                f"{qk.source} with score "
                f"{qk.score:.2f}, raised most by {top_key} at the source."
            )
        figure = upstream_figure(circuit, context.decode, self.n_bars)
        return PanelOutput(
            html=f'<p class="sla-note">{esc(note)}</p>{plotly_div(figure)}', data=summary
        )
