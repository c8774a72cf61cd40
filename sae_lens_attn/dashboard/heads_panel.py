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
        labels = list(context.head_labels)
        # a plain figure dict: building a `go.Figure` validates and copies plotly's template,
        # ~50 ms per feature, which an atlas of thousands of features pays in full
        figure = {
            "data": [
                {"type": "bar", "name": "decoder (writes)", "x": labels, "y": report.decoder_heads},
                {"type": "bar", "name": "encoder (reads)", "x": labels, "y": report.encoder_heads},
            ],
            "layout": {
                "barmode": "group",
                "height": 260,
                "margin": {"l": 40, "r": 10, "t": 10, "b": 40},
                "yaxis": {"title": {"text": "share of norm"}, "range": [0, 1]},
                "legend": {"orientation": "h", "y": 1.15},
            },
        }
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
