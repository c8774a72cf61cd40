"""Panel: logit-lens statistics of the feature's output direction through `W_O W_U`.

Shows std, skewness and (non-excess) kurtosis of the logit weights over the vocabulary
(Bloom 2024; `sae_lens_attn.attribution.logit_lens`), computed as the logit-lens detector
computes them (through the final LayerNorm's linear part), the class that detector
assigned when detector results were given, and the most promoted and suppressed tokens.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sae_lens_attn.dashboard.panels import DashboardPanel, PanelOutput, esc

if TYPE_CHECKING:
    from sae_lens_attn.dashboard.panels import DashboardContext, FeatureReport

LOGIT_LENS_DETECTOR = "logit_lens"


def _number(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None


class LogitLensPanel(DashboardPanel):
    name = "logit_lens"
    title = "Logit lens"

    def render(self, report: FeatureReport, context: DashboardContext) -> PanelOutput | None:
        lens = report.logit_lens
        if lens is None:
            return None
        rows = [row for row in report.families if row.detector == LOGIT_LENS_DETECTOR]
        if rows:
            verdict = rows[0].family or "none"
        else:
            verdict = "not run" if not context.detectors_ran else "no verdict"
        stats = [
            ("std", f"{lens.std:.4f}"),
            ("skewness", f"{lens.skewness:+.3f}"),
            ("kurtosis", f"{lens.kurtosis:.3f}"),
            ("class", verdict),
        ]
        stats_html = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in stats)
        tables = "".join(
            self._token_table(heading, pairs, context)
            for heading, pairs in (("promoted", lens.top), ("suppressed", lens.bottom))
        )
        return PanelOutput(
            html=(
                f'<table class="sla-stats">{stats_html}</table>'
                f'<div class="sla-token-tables">{tables}</div>'
            ),
            data={
                "mean": _number(lens.mean),
                "std": _number(lens.std),
                "skewness": _number(lens.skewness),
                "kurtosis": _number(lens.kurtosis),
                "class": rows[0].family if rows else None,
                "top_tokens": self._token_data(lens.top, context),
                "bottom_tokens": self._token_data(lens.bottom, context),
            },
        )

    @staticmethod
    def _token_table(heading: str, pairs, context: DashboardContext) -> str:
        body = "".join(
            f'<tr><td><code class="sla-token">{esc(context.decode(token))}</code></td>'
            f"<td>{weight:+.3f}</td></tr>"
            for token, weight in pairs
        )
        return f'<table class="sla-tokens-table"><tr><th colspan="2">{esc(heading)}</th></tr>{body}</table>'

    @staticmethod
    def _token_data(pairs, context: DashboardContext) -> list[dict]:
        return [
            {"token": context.decode(token), "id": token, "weight": round(weight, 4)}
            for token, weight in pairs
        ]
