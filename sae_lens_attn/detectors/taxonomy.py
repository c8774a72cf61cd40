"""The taxonomy: exactly one source-signature class per live feature.

Classes: `current_token`, `previous_token`, `duplicate_token`, `induction`,
`local_context`, `high_level_context`, `other`. The component detectors (the five
source-signature detectors and `induction`) decide membership on their own; their rows
stay as they are. The taxonomy also claims `induction` by signature alone: at least
`min_dfa_share` of the DFA at the induction target and at least `min_precision` of its
activation at tokens that occurred earlier in the row. (The `induction` detector asks more:
that the feature predicts the token it copies, "<t> is next by induction", on prompts
with controls; a feature that reads the induction head without that is still an
induction-signature feature.) The taxonomy gives each live feature the class of the
claim whose source category holds the largest mean DFA share (`CLASS_CATEGORIES`; ties
go to the earlier class in `CLASSES`); a feature nobody claims is `other`. Its
confidence is that DFA share (for `other`: one minus the largest share of any class, i.e.
how little any single source signature explains it). Features that never fire on the
tokens or have a zero decoder row are "dead" (`live = False`, no family), never classified.

Component rows are taken from `family_rows` (what earlier detectors of the same run
returned) when they cover the features, and computed otherwise; the source-signature
pass is shared (`detectors.signature`). Every row names the head holding most of the
feature's decoder norm (`head`, `L{layer}H{head}`); dense SAEs also get the fractions
(`head_fractions`), from which `detectors.heads_table` builds the per-head table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sae_lens_attn.attribution._sae_weights import is_block_diagonal
from sae_lens_attn.attribution.heads import sae_head_attribution
from sae_lens_attn.detectors.classes import CLASSES, COMPONENTS, DEAD, OTHER, TAXONOMY, FamilyRow
from sae_lens_attn.detectors.signature import CATEGORIES, CATEGORY_LABELS
from sae_lens_attn.detectors.source_detectors import (
    CLASS_CATEGORIES,
    SignatureThresholds,
    signatures_for,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.sources.head_layout import HeadLayout

__all__ = ["CLASSES", "COMPONENTS", "DEAD", "NAME", "OTHER", "TaxonomyDetector"]

NAME = TAXONOMY
SPARKLINE = ("previous", "current", "same_token", "induction_target", "near", "far")


def _component_rows(
    name: str, model: HookedTransformer, sae: SAE, layout: HeadLayout, features: list[int],
    family_rows: Sequence[FamilyRow] | None, options: dict[str, Any],
) -> dict[int, FamilyRow]:
    """`{feature: row}` of detector `name`: from `family_rows` if they cover `features`,
    else by running the detector (found through the plugin manager)."""
    given = {row.feature: row for row in family_rows or () if row.detector == name}
    if set(features) <= set(given):
        return given
    from sae_lens_attn.plugins import get_plugin_manager

    detector = get_plugin_manager().get("detector", name)
    detect = getattr(detector, "detect", detector)
    return {row.feature: row for row in detect(model, sae, layout, **{**options, "features": features})}


class TaxonomyDetector:
    """One source-signature class per live feature, from the component detectors."""

    name = NAME
    description = ("taxonomy: one class per live feature (current/previous/duplicate token, induction, "
                   "local/high-level context, other), with per-head table")

    def detect(
        self,
        model: HookedTransformer,
        sae: SAE,
        layout: HeadLayout | None = None,
        *,
        family_rows: Sequence[FamilyRow] | None = None,
        **options: Any,
    ) -> list[FamilyRow]:
        """One row per feature (all unless `features=`); `family_rows`: rows of detectors
        already run on the same SAE, reused instead of running them again."""
        thresholds = SignatureThresholds.from_options(options)
        layout, index, signatures = signatures_for(model, sae, layout, options)
        features = index.tolist()
        induction_signature = (
            (signatures.share(*CLASS_CATEGORIES["induction"]) >= thresholds.min_dfa_share)
            & (signatures.precision("seen") >= thresholds.min_precision)
        )
        components = {
            name: _component_rows(name, model, sae, layout, features, family_rows, options)
            for name in COMPONENTS
        }
        fractions = sae_head_attribution(sae, layout.n_heads, index.to(sae.b_dec.device)).cpu()
        dense = not is_block_diagonal(sae)
        labels = layout.head_labels
        shares = {cls: signatures.share(*cats) for cls, cats in CLASS_CATEGORIES.items()}
        rows = []
        for i, feature in enumerate(features):
            if not signatures.live[i]:
                rows.append(FamilyRow(self.name, feature, None, 0.0, {
                    "live": False, "class": DEAD,
                    "summary": "dead: " + ("zero decoder row" if signatures.fires[i] > 0
                                           else "never fires on the evaluation tokens"),
                }))
                continue
            claims = [cls for cls in COMPONENTS if components[cls][feature].family == cls]
            by_signature = "induction" not in claims and bool(induction_signature[i])
            if by_signature:
                claims.append("induction")
            head = labels[int(fractions[i].argmax())]
            if claims:
                winner = max(claims, key=lambda cls: (shares[cls][i].item(), -COMPONENTS.index(cls)))
                confidence = shares[winner][i].item()
                reason = components[winner][feature].evidence.get("summary", "")
                if winner == "induction" and by_signature:
                    reason = (f"induction signature ({confidence:.0%} of DFA at the induction target, "
                              f"{signatures.precision('seen')[i].item():.0%} of activation on repeated tokens); "
                              f"the induction detector: {reason}")
            else:
                winner = OTHER
                confidence = 1.0 - max(shares[cls][i].item() for cls in COMPONENTS)
                reason = "no family claims it; " + _strongest_source(signatures.dfa_share[i].tolist())
            evidence: dict[str, Any] = {
                "live": True,
                "class": winner,
                "confidence": confidence,
                "claimed_by": claims,
                "induction_by_signature_only": by_signature,
                "head": head,
                "dfa_share": {CATEGORY_LABELS[c]: signatures.dfa_share[i, CATEGORIES.index(c)].item()
                              for c in (*SPARKLINE, "start")},
                "summary": f"{winner}: {reason}" + ("" if head in reason else f"; {head}"),
            }
            if dense:
                evidence["head_fractions"] = dict(zip(labels, fractions[i].tolist(), strict=True))
            rows.append(FamilyRow(self.name, feature, winner, confidence, evidence))
        return rows

    def figures(self, rows: Sequence[FamilyRow], model: HookedTransformer | None = None) -> dict[str, go.Figure]:
        from sae_lens_attn.detectors.heads_table import heads_figure, heads_table

        table = heads_table(rows)
        return {"heads": heads_figure(table)} if table else {}


def _strongest_source(shares: list[float]) -> str:
    best = max(range(len(SPARKLINE)), key=shares.__getitem__)
    return f"largest DFA share {shares[best]:.0%} at {CATEGORY_LABELS[SPARKLINE[best]]}"
