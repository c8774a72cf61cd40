"""Dashboards: sae_dashboard's feature-centric page plus our panels (DFA by source
position, head attribution, logit lens, detector verdicts), as one offline HTML file.

Panels follow the protocol in `sae_lens_attn.dashboard.panels`. Importing this package
does not import torch; `render_dashboard` does when called.
"""

from sae_lens_attn.dashboard.config import DashboardConfig
from sae_lens_attn.dashboard.panels import (
    DashboardContext,
    DashboardPanel,
    FeatureReport,
    LogitLensSummary,
    PanelOutput,
    TopExample,
    esc,
    plotly_div,
)
from sae_lens_attn.dashboard.render import DashboardFiles, load_panels, render_dashboard

__all__ = [
    "DashboardConfig",
    "DashboardContext",
    "DashboardFiles",
    "DashboardPanel",
    "FeatureReport",
    "LogitLensSummary",
    "PanelOutput",
    "TopExample",
    "esc",
    "load_panels",
    "plotly_div",
    "render_dashboard",
]
