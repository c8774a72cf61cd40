"""What the demo measured and wrote: `SAEResult` per SAE and `DemoResult` for the run,
shared by the pipeline that fills them and the report that shows them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_lens_attn.demo.settings import DemoSettings
from sae_lens_attn.detectors.activity import FeatureActivity


@dataclass
class SAEResult:
    """What the demo measured and wrote for one SAE (paths relative to the output folder)."""

    architecture: str
    folder: Path
    d_sae: int
    metrics: dict[str, float]
    activity: FeatureActivity
    head_labels: list[str]
    families_json: Path
    family_summary: dict[str, Any]
    detector_errors: dict[str, str]
    induction_features: list[int]
    induction_heads: dict[str, int]
    dashboard: Path | None
    dashboard_features: list[int]
    seconds: dict[str, float] = field(default_factory=dict)
    head_evals: dict[str, dict[str, float]] = field(default_factory=dict)  # `HeadEvals.to_dict()`

    @property
    def live_count(self) -> int:
        return int(self.activity.live.sum())


@dataclass
class DemoResult:
    model_name: str
    model_summary: dict[str, Any]
    settings: DemoSettings
    saes: list[SAEResult]
    seconds: dict[str, float]
    report: Path | None = None
    index: Path | None = None
