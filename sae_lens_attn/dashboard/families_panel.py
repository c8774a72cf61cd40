"""Panel: the feature's source-signature class and each detector's verdict (`FamilyRow`s).

With a `taxonomy` row the panel opens with the class, its sub-label (token-specific or
"any"), its confidence and one-line evidence, and a sparkline of the mean DFA share at offsets -1, 0, earlier same token,
induction target, near window and far (`detectors.signature`); below, every other
detector's verdict and score.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from sae_lens_attn.dashboard.panels import DashboardPanel, PanelOutput, esc

if TYPE_CHECKING:
    from sae_lens_attn.dashboard.panels import DashboardContext, FeatureReport
    from sae_lens_attn.detectors.classes import FamilyRow

NOT_RUN = (
    "No detector results were given: pass the detectors' families.json to the dashboard "
    "(sae-lens-attn dashboard --families PATH) to see each detector's verdict here."
)
TAXONOMY = "taxonomy"
SPARKLINE = ("-1", "0", "earlier same token", "induction target", "near window", "far")
_BAR_WIDTH, _GAP, _HEIGHT = 22, 6, 40


def dfa_sparkline(shares: dict[str, Any]) -> str:
    """A small inline SVG bar chart of DFA share (0..1) per source offset in `SPARKLINE`,
    each bar with its label and value as a tooltip and the label under it."""
    bars = []
    for i, label in enumerate(SPARKLINE):
        value = shares.get(label)
        share = min(max(float(value), 0.0), 1.0) if isinstance(value, (int, float)) else 0.0
        x, height = i * (_BAR_WIDTH + _GAP), max(share * _HEIGHT, 0.5)
        bars.append(
            f'<g><title>{esc(f"{label}: {share:.0%} of positive DFA")}</title>'
            f'<rect x="{x}" y="{_HEIGHT - height:.1f}" width="{_BAR_WIDTH}" height="{height:.1f}" fill="#3b6fb6"/>'
            f'<text x="{x + _BAR_WIDTH / 2}" y="{_HEIGHT + 11}" font-size="9" text-anchor="middle">'
            f'{esc(label if len(label) <= 3 else "".join(w[0] for w in label.split()))}</text></g>'
        )
    width = len(SPARKLINE) * (_BAR_WIDTH + _GAP)
    return (f'<svg class="sla-sparkline" width="{width}" height="{_HEIGHT + 14}" role="img" '
            f'aria-label="DFA share by source offset">{"".join(bars)}</svg>')


def _signature_block(row: FamilyRow) -> str:
    evidence = row.evidence
    if not row.live:
        return f'<p class="sla-note">{esc(evidence.get("summary", "dead"))}</p>'
    confidence = evidence.get("confidence", row.score)
    confidence_text = f"{confidence:.2f}" if isinstance(confidence, (int, float)) and math.isfinite(confidence) else "—"
    legend = "offsets: -1, 0, earlier same token (est), induction target (it), near window (nw), far"
    return (
        '<div class="sla-signature">'
        f'<p><b>signature class:</b> <span class="sla-member">{esc(row.family or "other")}</span> '
        f"&mdash; {esc(evidence.get('sub_label', row.family or 'other'))} (confidence {esc(confidence_text)}; head {esc(evidence.get('head', '?'))})</p>"
        f"<p>{esc(evidence.get('summary', ''))}</p>"
        f"{dfa_sparkline(evidence.get('dfa_share', {}))}"
        f'<p class="sla-note">{esc(legend)}</p></div>'
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
        signature = next((row for row in report.families if row.detector == TAXONOMY), None)
        rows = "".join(
            "<tr>"
            f"<td>{esc(row.detector)}</td>"
            f'<td class="{"sla-member" if row.family else "sla-nonmember"}">'
            f"{esc(row.family or 'not a member')}</td>"
            f"<td>{esc(f'{row.score:.3f}' if math.isfinite(row.score) else '—')}</td>"
            f"<td>{esc(row.evidence.get('summary', ''))}</td>"
            "</tr>"
            for row in sorted(report.families, key=lambda row: row.detector)
            if row.detector != TAXONOMY
        )
        header = "<tr><th>detector</th><th>verdict</th><th>score</th><th>evidence</th></tr>"
        top = _signature_block(signature) if signature is not None else ""
        return PanelOutput(
            html=f'{top}<table class="sla-families">{header}{rows}</table>',
            data={"families": [row.to_dict() for row in report.families]},
        )
