"""The detectors' shared vocabulary: `FamilyRow` (what one detector says about one feature)
and the taxonomy's class names. Every detector module imports it; it imports none of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CLASSES", "COMPONENTS", "DEAD", "OTHER", "TAXONOMY", "FamilyRow"]

# the taxonomy detector's name, and its classes: one source component each, then `other`
TAXONOMY = "taxonomy"
OTHER = "other"
DEAD = "dead"
COMPONENTS = ("current_token", "previous_token", "duplicate_token", "induction", "local_context",
              "high_level_context")
CLASSES = (*COMPONENTS, OTHER)


@dataclass(frozen=True)
class FamilyRow:
    """What one detector says about one feature.

    `family` is the family label (None: not a member of any family this detector knows),
    `score` the detector's strength of membership (its meaning is in the detector's
    docstring) and `evidence` the numbers behind the decision (JSON-serialisable). Every
    detector puts a one-line human-readable `evidence["summary"]` and, for features it did
    not analyse because they never fire, `evidence["live"] = False`.
    """

    detector: str
    feature: int
    family: str | None
    score: float
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return bool(self.evidence.get("live", True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "feature": self.feature,
            "family": self.family,
            "score": _finite_or_none(self.score),
            "evidence": _jsonable(self.evidence),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FamilyRow:
        score = data.get("score")
        return cls(
            detector=str(data["detector"]),
            feature=int(data["feature"]),
            family=data.get("family") or None,
            score=math.nan if score is None or score == "" else float(score),
            evidence=dict(data.get("evidence") or {}),
        )


def _finite_or_none(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    """Plain JSON types from tensors, numpy scalars/arrays, tuples; NaN/inf -> None."""
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if hasattr(value, "tolist"):  # torch / numpy tensors and scalars
        return _jsonable(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return _finite_or_none(value)
    raise TypeError(f"evidence value {value!r} of type {type(value).__name__} is not JSON-able")
