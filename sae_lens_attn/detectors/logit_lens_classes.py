"""Logit-lens classes (Bloom, 2024): prediction, suppression and partition features.

From the statistics of a feature's logit weights over the vocabulary
(`sae_lens_attn.attribution.logit_lens`; kurtosis non-excess, 3 for a Gaussian):

- **prediction**: heavy right tail, promotes a small class of tokens:
  `kurtosis >= min_kurtosis` and `skewness >= min_abs_skewness`.
- **suppression**: heavy left tail: `kurtosis >= min_kurtosis` and
  `skewness <= -min_abs_skewness`.
- **partition**: splits the vocabulary into two large groups (bimodal, lighter tails than
  a Gaussian): `kurtosis <= partition_max_kurtosis` and
  `|skewness| <= partition_max_abs_skewness`.
- none otherwise, and for features whose output direction is zero.

The defaults are our reading of Bloom's skewness/kurtosis scatter, not numbers from the
post: `min_kurtosis=6` (twice a Gaussian's), `min_abs_skewness=0.5`,
`partition_max_kurtosis=2.5`, `partition_max_abs_skewness=1.0` (a two-valued split
of 30%/70% has skewness 0.87 and kurtosis 1.76). Scores: skewness for prediction,
-skewness for suppression, `3 - kurtosis` for partition, 0 for none.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sae_lens_attn._safe_output import plotly_texts
from sae_lens_attn.attribution.logit_lens import (
    DEFAULT_CHUNK_SIZE,
    LogitStats,
    dead_rows,
    iter_logit_weights,
    moments,
    sae_output_directions,
    unembed_through_final_ln,
)
from sae_lens_attn.detectors.base import (
    dead_feature_row,
    feature_index,
    resolve_layout,
    token_strings_of,
)
from sae_lens_attn.detectors.classes import FamilyRow
from sae_lens_attn.models.token_display import quoted

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.sources.head_layout import HeadLayout

__all__ = ["LogitLensClassDetector", "LogitLensThresholds", "logit_lens_classes", "skew_kurtosis_figure"]

PREDICTION, SUPPRESSION, PARTITION = "prediction", "suppression", "partition"


@dataclass(frozen=True)
class LogitLensThresholds:
    """Thresholds of the three classes (see the module docstring for their meaning)."""

    min_kurtosis: float = 6.0
    min_abs_skewness: float = 0.5
    partition_max_kurtosis: float = 2.5
    partition_max_abs_skewness: float = 1.0

    def __post_init__(self) -> None:
        if self.partition_max_kurtosis >= self.min_kurtosis:
            raise ValueError(
                f"partition_max_kurtosis ({self.partition_max_kurtosis}) must be below "
                f"min_kurtosis ({self.min_kurtosis}) so that the classes cannot overlap"
            )
        if self.min_abs_skewness < 0 or self.partition_max_abs_skewness < 0:
            raise ValueError("skewness thresholds are magnitudes and must be >= 0")


def logit_lens_classes(
    stats: LogitStats, thresholds: LogitLensThresholds | None = None
) -> tuple[list[str | None], torch.Tensor]:
    """Class of each feature (None: no class) and its score `[n]`, from `LogitStats`."""
    t = thresholds or LogitLensThresholds()
    skew, kurt = stats.skewness, stats.kurtosis
    valid = (stats.std > 0) & skew.isfinite() & kurt.isfinite()
    heavy = valid & (kurt >= t.min_kurtosis)
    prediction = heavy & (skew >= t.min_abs_skewness)
    suppression = heavy & (skew <= -t.min_abs_skewness)
    partition = valid & (kurt <= t.partition_max_kurtosis) & (skew.abs() <= t.partition_max_abs_skewness)
    classes: list[str | None] = [None] * len(stats)
    score = torch.zeros(len(stats))
    for mask, name, value in (
        (prediction, PREDICTION, skew),
        (suppression, SUPPRESSION, -skew),
        (partition, PARTITION, 3.0 - kurt),
    ):
        for i in mask.nonzero().flatten().tolist():
            classes[i] = name
        score = torch.where(mask, value, score)
    return classes, score


class LogitLensClassDetector:
    """Prediction / suppression / partition features from logit-weight statistics."""

    name = "logit_lens"
    description = "logit-lens classes (Bloom): prediction, suppression, partition features"

    def detect(
        self,
        model: HookedTransformer,
        sae: SAE,
        layout: HeadLayout | None = None,
        *,
        features: Sequence[int] | None = None,
        thresholds: LogitLensThresholds | None = None,
        through_final_ln: bool = True,
        top_k: int = 5,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        progress: bool = False,
        **_: Any,
    ) -> list[FamilyRow]:
        """One row per feature: class, score, and the statistics and top/bottom tokens;
        features with a zero or non-finite decoder row are dead (`dead_feature_row`)."""
        from tqdm.auto import tqdm

        thresholds = thresholds or LogitLensThresholds()
        index = feature_index(sae, features)
        W_dec = sae.W_dec.detach()
        dead = dead_rows(W_dec[index.to(W_dec.device)]).cpu()
        dead_features = index[dead].tolist()
        index = index[~dead]
        directions = sae_output_directions(sae, model, resolve_layout(sae, model, layout))[index]
        W_U = unembed_through_final_ln(model) if through_final_ln else model.W_U.detach()
        stats_parts, top_parts, bottom_parts = [], [], []
        chunks = iter_logit_weights(directions, W_U, chunk_size)
        with tqdm(total=len(index), desc="logit lens", unit="feature", disable=not progress) as bar:
            for _, weights in chunks:
                stats_parts.append(moments(weights).cpu())
                top_parts.append(weights.topk(top_k, dim=1).indices.cpu())
                bottom_parts.append(weights.topk(top_k, dim=1, largest=False).indices.cpu())
                bar.update(weights.shape[0])
        rows = [dead_feature_row(self.name, feature) for feature in dead_features]
        if not len(index):
            return rows
        stats = LogitStats.concat(stats_parts)
        classes, score = logit_lens_classes(stats, thresholds)
        strings = token_strings_of(model)
        top, bottom = torch.cat(top_parts), torch.cat(bottom_parts)
        for i, feature in enumerate(index.tolist()):
            evidence: dict[str, Any] = {
                "mean": stats.mean[i].item(),
                "std": stats.std[i].item(),
                "skewness": stats.skewness[i].item(),
                "kurtosis": stats.kurtosis[i].item(),
                "top_tokens": top[i].tolist(),
                "bottom_tokens": bottom[i].tolist(),
            }
            if strings is not None:
                evidence["top_token_strings"] = [strings[t] for t in top[i].tolist()]
                evidence["bottom_token_strings"] = [strings[t] for t in bottom[i].tolist()]
            evidence["summary"] = _summary(classes[i], evidence)
            rows.append(FamilyRow(self.name, feature, classes[i], score[i].item(), evidence))
        return sorted(rows, key=lambda row: row.feature)

    def figures(self, rows: Sequence[FamilyRow], model: HookedTransformer | None = None) -> dict[str, go.Figure]:
        rows = [row for row in rows if row.detector == self.name]
        return {"logit_lens_skew_kurtosis": skew_kurtosis_figure(rows)} if rows else {}


def _summary(family: str | None, evidence: dict[str, Any]) -> str:
    shape = f"skewness {evidence['skewness']:.2f}, kurtosis {evidence['kurtosis']:.2f}"
    if evidence["std"] == 0 or math.isnan(evidence["skewness"]):
        return "zero output direction: no logit weights"
    words = evidence.get("top_token_strings" if family != SUPPRESSION else "bottom_token_strings")
    shown = f"; {'promotes' if family != SUPPRESSION else 'suppresses'} {', '.join(quoted(word) for word in words[:3])}" if words else ""
    return f"{family or 'no class'} ({shape}){shown}"


def skew_kurtosis_figure(rows: Sequence[FamilyRow]) -> go.Figure:
    """Scatter of skewness vs kurtosis (log axis) of logit-lens rows, one colour per class."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for family in (PREDICTION, SUPPRESSION, PARTITION, None):
        members = [r for r in rows if r.family == family and math.isfinite(r.evidence.get("kurtosis") or math.nan)]
        if not members:
            continue
        figure.add_trace(
            go.Scattergl(
                x=[r.evidence["skewness"] for r in members],
                y=[r.evidence["kurtosis"] for r in members],
                mode="markers",
                marker={"size": 4},
                name=f"{family or 'none'} ({len(members)})",
                text=plotly_texts(f"feature {r.feature}: {r.evidence.get('summary', '')}"
                                  for r in members),
                hoverinfo="text",
            )
        )
    figure.update_layout(
        title="Logit weight distribution of each feature (Bloom's logit-lens classes)",
        xaxis_title="skewness",
        yaxis_title="kurtosis (non-excess, Gaussian = 3)",
        yaxis_type="log",
        template="plotly_white",
    )
    return figure
