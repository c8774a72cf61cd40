"""Built-in dashboard panels, registered through the `sae_lens_attn` entry point group
exactly as a third-party plugin would register its own."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from sae_lens_attn.plugins import PluginEntry, hookimpl


def _panel(module: str, class_name: str) -> Callable[[], object]:
    """A `load` callable that imports `module` only when the panel is needed."""
    return lambda: getattr(importlib.import_module(module), class_name)()


@hookimpl
def sae_lens_attn_dashboard_panels() -> list[PluginEntry]:
    return [
        PluginEntry(
            "dfa",
            "DFA by source position for each top example (per-head split on hover)",
            load=_panel("sae_lens_attn.dashboard.dfa_panel", "DFAPanel"),
        ),
        PluginEntry(
            "head_attribution",
            "bar chart of the feature's decoder and encoder norm per head",
            load=_panel("sae_lens_attn.dashboard.heads_panel", "HeadAttributionPanel"),
        ),
        PluginEntry(
            "logit_lens",
            "logit-weight std, skewness, kurtosis, class and top/bottom tokens via W_O W_U",
            load=_panel("sae_lens_attn.dashboard.logit_lens_panel", "LogitLensPanel"),
        ),
        PluginEntry(
            "families",
            "each detector's verdict and score for the feature",
            load=_panel("sae_lens_attn.dashboard.families_panel", "FamilyPanel"),
        ),
        PluginEntry(
            "circuit",
            "top upstream residual components (value side) of the feature's top example",
            load=_panel("sae_lens_attn.dashboard.circuit_panel", "CircuitPanel"),
        ),
    ]
