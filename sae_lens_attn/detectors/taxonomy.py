"""The taxonomy: exactly one source-signature class per live feature, signature first.

A feature's class is where its attribution comes from: the mean share of its positive DFA
(at its top activations, `detectors.signature`) in each source category, one category per
class (`CLASS_SOURCES`):

    current_token       current (offset 0)          previous_token   previous (offset -1)
    duplicate_token     earlier same token          induction        induction target
    local_context       near window (offsets -2 .. -near_window)
    high_level_context  far (beyond the near window)

The category holding the largest share wins when that share is at least `min_dfa_share`
(default 0.5: a majority, so no other category can hold as much; chosen on the ground
truth of `tests/test_taxonomy_ground_truth.py`, the only value of 0.3-0.7 that recovers
every planted class with precision and recall >= 0.9 there, docs/taxonomy.md); the share
is the confidence. A feature whose largest share
is below it is `other`, and its evidence names its two largest categories and their
shares. Position 0 (attention sinks) is never a class: its share counts against dominance.

Token-specificity is evidence and a sub-label, never the gate: the feature's token set (the
key tokens of its top examples, `token_set_size` at most) is *specific* when at least
`min_token_consistency` of its examples read a token of the set and, where the class has a
condition counted on the corpus (current / previous token in the set, a repeat of a set
token), at least `min_precision` of its activation mass lies where that condition holds.
The sub-label says which: "previous token: ' def'" or "previous token: any".

The component detectors (the five source-signature detectors and `induction`) keep their
own, stricter verdicts in their rows; when their rows of the same run are given
(`family_rows`), `evidence["claimed_by"]` lists the ones that claim the feature. Features
that never fire on the tokens or have a zero decoder row are dead (`live = False`, no
family), never classified. Every row names the head holding most of the feature's decoder
norm (`head`, `L{layer}H{head}`); dense SAEs also get the fractions (`head_fractions`),
from which `detectors.heads_table` builds the per-head table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from sae_lens_attn.attribution._sae_weights import is_block_diagonal
from sae_lens_attn.attribution.heads import sae_head_attribution
from sae_lens_attn.detectors.base import token_strings_of
from sae_lens_attn.detectors.classes import CLASSES, COMPONENTS, DEAD, OTHER, TAXONOMY, FamilyRow
from sae_lens_attn.detectors.signature import CATEGORIES, CATEGORY_LABELS, SourceSignatures
from sae_lens_attn.detectors.source_detectors import feature_evidence, signatures_for

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.sources.head_layout import HeadLayout

__all__ = ["CLASSES", "CLASS_SOURCES", "COMPONENTS", "DEAD", "NAME", "OTHER", "TaxonomyDetector",
           "TaxonomyThresholds"]

NAME = TAXONOMY
# the source category whose DFA share decides each class
CLASS_SOURCES = {
    "current_token": "current",
    "previous_token": "previous",
    "duplicate_token": "same_token",
    "induction": "induction_target",
    "local_context": "near",
    "high_level_context": "far",
}
# the sub-label's name of each class, and the corpus condition its token precision is counted on
SUB_LABELS = {
    "current_token": ("current token", "current"),
    "previous_token": ("previous token", "previous"),
    "duplicate_token": ("duplicate token", "repeat"),
    "induction": ("induction", None),
    "local_context": ("local context", None),
    "high_level_context": ("high-level context", None),
}


@dataclass(frozen=True)
class TaxonomyThresholds:
    """`min_dfa_share` decides the class; the other two only the sub-label (see the module)."""

    min_dfa_share: float = 0.5
    min_token_consistency: float = 0.8
    min_precision: float = 0.8

    def __post_init__(self) -> None:
        for item in fields(self):
            value = float(getattr(self, item.name))
            if not 0 <= value <= 1:
                raise ValueError(f"{item.name} must be in [0, 1], got {value}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> TaxonomyThresholds:
        return cls(**{f.name: float(options[f.name]) for f in fields(cls) if f.name in options})


def classify(signatures: SourceSignatures, min_dfa_share: float) -> tuple[list[str], torch.Tensor]:
    """`(class per feature, its DFA share [F])`: the class whose source category holds the
    largest share if that is >= `min_dfa_share`, else `other` (with its largest share)."""
    shares = torch.stack([signatures.share(CLASS_SOURCES[cls]) for cls in COMPONENTS], dim=1)
    best, winner = shares.max(dim=1)
    classes = [COMPONENTS[w] if b >= min_dfa_share else OTHER for w, b in zip(winner.tolist(), best.tolist(),
                                                                                strict=True)]
    return classes, best


def _specificity(precision: dict[str, torch.Tensor], i: int, cls: str, t: TaxonomyThresholds,
                 evidence: dict[str, Any]) -> str:
    """The sub-label of live feature `i` of class `cls` (`precision`: `{condition: [F]}`);
    records `token_precision` and `token_specific` in `evidence`."""
    name, condition = SUB_LABELS[cls]
    value = precision[condition][i].item() if condition else None
    specific = (bool(evidence["token_set"]) and evidence["token_consistency"] >= t.min_token_consistency
                and (value is None or value >= t.min_precision))
    evidence.update(token_precision=value, token_specific=specific)
    return f"{name}: {evidence['token_set_shown'] if specific else 'any'}"


def _largest_sources(shares: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(shares.items(), key=lambda item: -item[1])[:2]


def _summary(cls: str, evidence: dict[str, Any], min_dfa_share: float) -> str:
    if cls == OTHER:
        if not evidence["n_examples"]:
            return "other: no positive DFA at its top activations (it fires on its bias)"
        (a, share_a), (b, share_b) = evidence["largest_sources"]
        return (f"other: no dominant source (largest {share_a:.0%} at {a}, then {share_b:.0%} at {b}; "
                f"a class needs {min_dfa_share:.0%})")
    source = CATEGORY_LABELS[CLASS_SOURCES[cls]]
    detail = f"{evidence['confidence']:.0%} of DFA at {source}"
    if evidence["token_set"]:
        detail += (f"; tokens {evidence['token_set_shown']} in {evidence['token_consistency']:.0%} of top "
                   "examples")
        if evidence["token_precision"] is not None:
            detail += f", {evidence['token_precision']:.0%} of activation there"
    return f"{evidence['sub_label']} ({detail})"


class TaxonomyDetector:
    """One source-signature class per live feature, with a token-specificity sub-label."""

    name = NAME
    description = ("taxonomy: one class per live feature from where its DFA comes from (current/previous/"
                   "duplicate token, induction, local/high-level context, other), with per-head table")

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
        already run on the same SAE, named in `claimed_by` when they claim a feature."""
        thresholds = TaxonomyThresholds.from_options(options)
        layout, index, signatures = signatures_for(model, sae, layout, options)
        features = index.tolist()
        classes, confidence = classify(signatures, thresholds.min_dfa_share)
        precision = {condition: signatures.precision(condition) for _, condition in SUB_LABELS.values() if condition}
        claims: dict[int, list[str]] = {}
        for row in family_rows or ():
            if row.family in COMPONENTS and row.detector == row.family:
                claims.setdefault(row.feature, []).append(row.family)
        fractions = sae_head_attribution(sae, layout.n_heads, index.to(sae.b_dec.device)).cpu()
        dense = not is_block_diagonal(sae)
        labels = layout.head_labels
        strings = token_strings_of(model)
        rows = []
        for i, feature in enumerate(features):
            if not signatures.live[i]:
                rows.append(FamilyRow(self.name, feature, None, 0.0, {
                    "live": False, "class": DEAD,
                    "summary": "dead: " + ("zero decoder row" if signatures.fires[i] > 0
                                           else "never fires on the evaluation tokens"),
                }))
                continue
            cls = classes[i]
            evidence = feature_evidence(signatures, i, strings)
            shares = {CATEGORY_LABELS[c]: signatures.dfa_share[i, CATEGORIES.index(c)].item()
                      for c in CATEGORIES}
            evidence.update(
                {"class": cls, "head": labels[int(fractions[i].argmax())],
                 "claimed_by": sorted(claims.get(feature, []))},
            )
            if cls == OTHER:
                evidence["confidence"] = 1.0 - confidence[i].item()
                evidence["largest_sources"] = _largest_sources(shares)
                evidence["sub_label"] = OTHER
            else:
                evidence["confidence"] = confidence[i].item()
                evidence["sub_label"] = _specificity(precision, i, cls, thresholds, evidence)
            evidence["summary"] = f"{_summary(cls, evidence, thresholds.min_dfa_share)}; {evidence['head']}"
            if dense:
                evidence["head_fractions"] = dict(zip(labels, fractions[i].tolist(), strict=True))
            rows.append(FamilyRow(self.name, feature, cls, evidence["confidence"], evidence))
        return rows

    def figures(self, rows: Sequence[FamilyRow], model: HookedTransformer | None = None) -> dict[str, go.Figure]:
        from sae_lens_attn.detectors.heads_table import heads_figure, heads_table

        table = heads_table(rows)
        return {"heads": heads_figure(table)} if table else {}
