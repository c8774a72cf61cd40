"""Panel: each detector's verdict and score for the feature (`FamilyRow`s)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sae_lens_attn.dashboard.panels import DashboardPanel, PanelOutput, esc

if TYPE_CHECKING:
    from sae_lens_attn.dashboard.panels import DashboardContext, FeatureReport

NOT_RUN = (
    "No detector results were given: pass the detectors' families.json to the dashboard "
    "(sae-lens-attn dashboard --families PATH) to see each detector's verdict here."
)


class FamilyPanel(DashboardPanel):
    name = "families"
    title = "Family membership"

    def render(self, report: FeatureReport, context: DashboardContext) -> PanelOutput:
        if not context.detectors_ran:
            return PanelOutput(html=f'<p class="sla-note">{esc(NOT_RUN)}</p>', data={"families": None})
        if not report.families:
            text = "The detectors returned no row for this feature."
            return PanelOutput(html=f'<p class="sla-note">{esc(text)}</p>', data={"families": []})
        rows = "".join(
            "<tr>"
            f"<td>{esc(row.detector)}</td>"
            f'<td class="{"sla-member" if row.family else "sla-nonmember"}">'
            f"{esc(row.family or 'not a member')}</td>"
            f"<td>{esc(f'{row.score:.3f}' if math.isfinite(row.score) else '—')}</td>"
            f"<td>{esc(row.evidence.get('summary', ''))}</td>"
            "</tr>"
            for row in sorted(report.families, key=lambda row: row.detector)
        )
        header = "<tr><th>detector</th><th>verdict</th><th>score</th><th>evidence</th></tr>"
        return PanelOutput(
            html=f'<table class="sla-families">{header}{rows}</table>',
            data={"families": [row.to_dict() for row in report.families]},
        )
