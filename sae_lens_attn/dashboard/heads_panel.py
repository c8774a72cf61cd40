"""Panel: the feature's weight per head (decoder and encoder norm fractions), as bars."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sae_lens_attn.dashboard.panels import DashboardPanel, PanelOutput, esc, plotly_div

if TYPE_CHECKING:
    from sae_lens_attn.dashboard.panels import DashboardContext, FeatureReport


class HeadAttributionPanel(DashboardPanel):
    name = "head_attribution"
    title = "Head attribution"

    def render(self, report: FeatureReport, context: DashboardContext) -> PanelOutput:
        import plotly.graph_objects as go

        labels = list(context.head_labels)
        figure = go.Figure(
            [
                go.Bar(name="decoder (writes)", x=labels, y=report.decoder_heads),
                go.Bar(name="encoder (reads)", x=labels, y=report.encoder_heads),
            ]
        )
        figure.update_layout(
            barmode="group",
            height=260,
            margin={"l": 40, "r": 10, "t": 10, "b": 40},
            yaxis={"title": "share of norm", "range": [0, 1]},
            legend={"orientation": "h", "y": 1.15},
        )
        top = max(range(len(labels)), key=lambda h: report.decoder_heads[h])
        summary = (
            f"{labels[top]} holds {report.decoder_heads[top]:.0%} of the decoder norm "
            f"({report.encoder_heads[top]:.0%} of the encoder norm)."
        )
        return PanelOutput(
            html=f'<p class="sla-note">{esc(summary)}</p>{plotly_div(figure, height=260)}',
            data={
                "heads": labels,
                "decoder_weights_dist": [round(v, 4) for v in report.decoder_heads],
                "encoder_weights_dist": [round(v, 4) for v in report.encoder_heads],
            },
        )
