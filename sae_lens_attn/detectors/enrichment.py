"""Token-set enrichment detector: which token sets each feature promotes or suppresses.

For every feature and token set: the tutorial's enrichment score (ES, the KS statistic of
the set's logit weights against the rest's), its direction, a p-value and a
Benjamini-Hochberg q-value across all features x sets (`sae_lens_attn.detectors.tsea`).
A feature belongs to the family "promotes <set>" / "suppresses <set>" of its set with the
largest ES among those with `q <= alpha` and `ES >= min_es`; its score is that ES (the
largest ES over all sets when none qualifies). `min_es` is an effect size: with 50k
tokens, an ES of 0.02 is already "significant" for a set of half the vocabulary.
Defaults: `alpha=0.05`, `min_es=0.2`, `method="ks"`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sae_lens_attn._safe_output import plotly_texts
from sae_lens_attn.attribution.logit_lens import (
    dead_rows,
    sae_output_directions,
    unembed_through_final_ln,
)
from sae_lens_attn.detectors.base import dead_feature_row, feature_index, resolve_layout
from sae_lens_attn.detectors.classes import FamilyRow
from sae_lens_attn.detectors.tsea import (
    ENRICHMENT_CHUNK_SIZE,
    EnrichmentResult,
    PValueMethod,
    token_set_enrichment,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.sources.head_layout import HeadLayout

__all__ = ["EnrichmentDetector", "enrichment_figure", "enrichment_rows"]


def enrichment_rows(
    result: EnrichmentResult,
    features: Sequence[int],
    alpha: float = 0.05,
    min_es: float = 0.2,
    detector: str = "enrichment",
    notes: Sequence[str] = (),
) -> list[FamilyRow]:
    """One `FamilyRow` per feature from an `EnrichmentResult` (see the module docstring)."""
    qualifies = (result.q <= alpha) & (result.es >= min_es)
    rows = []
    for i, feature in enumerate(features):
        significant = {
            name: {
                "es": result.es[i, j].item(),
                "direction": "promoted" if result.direction[i, j] > 0 else "suppressed",
                "p": result.p[i, j].item(),
                "q": result.q[i, j].item(),
            }
            for j, name in enumerate(result.set_names)
            if qualifies[i, j]
        }
        if significant:
            best = max(significant, key=lambda name: significant[name]["es"])
            verb = "promotes" if significant[best]["direction"] == "promoted" else "suppresses"
            family, score = f"{verb} {best}", significant[best]["es"]
            summary = f"{verb} {best} (ES {score:.2f}, q {significant[best]['q']:.2g})"
        else:
            j = int(result.es[i].argmax())
            family, score = None, result.es[i, j].item()
            summary = f"no enriched token set (largest ES {score:.2f}: {result.set_names[j]})"
        evidence: dict[str, Any] = {"summary": summary, "significant_sets": significant}
        if notes:
            evidence["notes"] = list(notes)
        rows.append(FamilyRow(detector, int(feature), family, score, evidence))
    return rows


class EnrichmentDetector:
    """GSEA-style token-set enrichment of each feature's logit weights, with q-values."""

    name = "enrichment"
    description = "token-set enrichment (GSEA-style, SAELens tutorial tsea) with BH-corrected p-values"

    def detect(
        self,
        model: HookedTransformer,
        sae: SAE,
        layout: HeadLayout | None = None,
        *,
        features: Sequence[int] | None = None,
        token_sets: Mapping[str, Sequence[int]] | None = None,
        regex: Mapping[str, str] | None = None,
        pos: bool = True,
        method: PValueMethod = "ks",
        n_permutations: int = 1000,
        alpha: float = 0.05,
        min_es: float = 0.2,
        through_final_ln: bool = True,
        chunk_size: int = ENRICHMENT_CHUNK_SIZE,
        seed: int = 0,
        progress: bool = False,
        **_: Any,
    ) -> list[FamilyRow]:
        """One row per feature. Token sets: `token_sets` ({name: ids}) if given, else the
        built-in sets of the model's vocabulary plus `regex` ({name: pattern}) and, when
        NLTK's tagger data is installed and `pos`, part-of-speech sets."""
        from sae_lens_attn.detectors.token_sets import token_sets_for_model

        notes: list[str] = []
        if token_sets is None:
            token_sets, notes = token_sets_for_model(model, regex=regex, pos=pos)
        token_sets = {name: ids for name, ids in token_sets.items() if 0 < len(ids) < model.W_U.shape[1]}
        index = feature_index(sae, features)
        W_dec = sae.W_dec.detach()
        dead = dead_rows(W_dec[index.to(W_dec.device)]).cpu()
        rows = [dead_feature_row(self.name, feature) for feature in index[dead].tolist()]
        index = index[~dead]  # dead features take no part in the tests (nor in BH's count)
        if len(index):
            directions = sae_output_directions(sae, model, resolve_layout(sae, model, layout))[index]
            W_U = unembed_through_final_ln(model) if through_final_ln else model.W_U.detach()
            result = token_set_enrichment(
                directions, W_U, dict(token_sets), method, n_permutations, chunk_size, seed, progress
            )
            rows += enrichment_rows(result, index.tolist(), alpha, min_es, self.name, notes)
        return sorted(rows, key=lambda row: row.feature)

    def figures(self, rows: Sequence[FamilyRow], model: HookedTransformer | None = None) -> dict[str, go.Figure]:
        rows = [row for row in rows if row.detector == self.name]
        return {"enrichment_families": enrichment_figure(rows)} if rows else {}


def enrichment_figure(rows: Sequence[FamilyRow]) -> go.Figure:
    """Bar chart: how many features each token set is enriched in, promoted vs suppressed."""
    import plotly.graph_objects as go

    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        for name, stats in row.evidence.get("significant_sets", {}).items():
            counts.setdefault(name, {"promoted": 0, "suppressed": 0})[stats["direction"]] += 1
    names = sorted(counts, key=lambda name: -sum(counts[name].values()))
    figure = go.Figure(
        [
            go.Bar(name=direction, x=plotly_texts(names), y=[counts[name][direction] for name in names])
            for direction in ("promoted", "suppressed")
        ]
    )
    figure.update_layout(
        barmode="group",
        title=f"Features with a significantly enriched token set (of {len(rows)} features)",
        xaxis_title="token set",
        yaxis_title="features",
        template="plotly_white",
    )
    return figure
