"""The dashboard panel protocol and the per-feature data panels receive.

A panel is an object with a `name`, a `title` and a `render(report, context)` method that
returns a `PanelOutput`: an HTML fragment (every piece of text in it escaped with `esc`,
tokens included: they are arbitrary text) and the JSON-serialisable data the panel adds to
the feature's entry in `features.json`. Panels are contributed by plugins through the
`sae_lens_attn_dashboard_panels` hook (kind "dashboard_panel"); `load()` returns the panel.

The renderer computes one `FeatureReport` per feature (top examples with their DFA, head
attribution, logit-lens summary, detector verdicts) and a `DashboardContext` shared by all
features; a panel that needs more calls `prepare(context, reports)` once, batched, before
any `render`. Figures go in as `plotly_div(figure)`: the page draws them with the inlined
plotly.js when the feature is shown, so nothing is fetched from the network.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.dashboard.config import DashboardConfig
    from sae_lens_attn.detectors.classes import FamilyRow
    from sae_lens_attn.sources.head_layout import HeadLayout

__all__ = [
    "DashboardContext",
    "DashboardPanel",
    "FeatureReport",
    "LogitLensSummary",
    "PanelOutput",
    "TopExample",
    "esc",
    "plotly_div",
]


def esc(text: object) -> str:
    """HTML-escape any text for element content and quoted attributes (`<>&"'`)."""
    return html.escape(str(text), quote=True)


def plotly_div(figure: Any, height: int | None = None) -> str:
    """A `<div>` the page renders as a plotly figure (a `go.Figure` or its dict) once shown.

    The figure JSON sits in an escaped `data-figure` attribute and is drawn by the page
    script with `Plotly.newPlot`, never parsed as HTML.
    """
    from plotly.io.json import to_json_plotly

    spec = figure.to_plotly_json() if hasattr(figure, "to_plotly_json") else figure
    style = f' style="height:{int(height)}px"' if height else ""
    return f'<div class="sla-plotly"{style} data-figure="{esc(to_json_plotly(spec))}"></div>'


@dataclass(frozen=True)
class TopExample:
    """One top-activating example shown by sae_dashboard, with its DFA.

    `token_ids` are the prompt's tokens `0..dest`; `dfa [dest + 1, n_heads]` is the DFA by
    source position and head (heads in the SAE input's order) at `dest`; `dfa_bias` is the
    `b_dec` plus `b_enc` term, so `dfa.sum() + dfa_bias` is the pre-activation.
    """

    prompt_index: int
    dest: int
    activation: float
    token_ids: tuple[int, ...]
    dfa: torch.Tensor
    dfa_bias: float

    @property
    def pre_activation(self) -> float:
        return float(self.dfa.sum()) + self.dfa_bias


@dataclass(frozen=True)
class LogitLensSummary:
    """Logit weights of the feature's output direction over the vocabulary.

    `top` and `bottom` are `(token id, weight)` pairs, largest and smallest first.
    """

    mean: float
    std: float
    skewness: float
    kurtosis: float
    top: tuple[tuple[int, float], ...]
    bottom: tuple[tuple[int, float], ...]


@dataclass
class FeatureReport:
    """Everything the built-in panels show for one feature.

    `decoder_heads` / `encoder_heads`: per-head norm fractions (`[n_heads]`, sum 1);
    `families`: the detectors' rows for this feature (empty when none ran).
    """

    feature: int
    examples: list[TopExample]
    decoder_heads: list[float]
    encoder_heads: list[float]
    logit_lens: LogitLensSummary | None = None
    families: list[FamilyRow] = field(default_factory=list)


@dataclass
class DashboardContext:
    """What every panel may read: the model, the SAE as given (the page shows its
    activations everywhere; sae_dashboard runs on an exact dense copy), its head layout, the prompts `tokens [n_prompts, seq]`, `decode(token_id)` for
    display (raw text: escape it), one label per SAE input head (`"L1H3"`), whether
    detector results were supplied, and the page's `DashboardConfig`."""

    model: HookedTransformer
    sae: SAE
    layout: HeadLayout
    tokens: torch.Tensor
    decode: Callable[[int], str]
    head_labels: Sequence[str]
    detectors_ran: bool = False
    config: DashboardConfig = field(default_factory=lambda: _default_config())

    @classmethod
    def for_model(
        cls,
        model: HookedTransformer,
        sae: SAE,
        layout: HeadLayout,
        tokens: torch.Tensor,
        detectors_ran: bool,
        config: DashboardConfig,
    ) -> DashboardContext:
        """The context a page of `model`'s SAE gets: tokens shown through the model's
        tokenizer (`token_display_fn`), heads labelled by the layout."""
        from sae_lens_attn.models.token_display import token_display_fn

        return cls(
            model=model,
            sae=sae,
            layout=layout,
            tokens=tokens,
            decode=token_display_fn(model.tokenizer),
            head_labels=layout.head_labels,
            detectors_ran=detectors_ran,
            config=config,
        )


def _default_config() -> DashboardConfig:
    from sae_lens_attn.dashboard.config import DashboardConfig

    return DashboardConfig()


@dataclass(frozen=True)
class PanelOutput:
    """A panel's contribution for one feature: escaped `html` and JSON-ready `data`."""

    html: str
    data: dict[str, Any] = field(default_factory=dict)


class DashboardPanel:
    """Base class of dashboard panels (subclassing is optional; the renderer only uses
    these attributes). `script` is JavaScript added once per page; `wide` panels take a
    full row."""

    name: str = ""
    title: str = ""
    script: str = ""
    wide: bool = False

    def prepare(self, context: DashboardContext, reports: Sequence[FeatureReport]) -> None:
        """Batched work for all features before any `render` (default: nothing)."""

    def render(self, report: FeatureReport, context: DashboardContext) -> PanelOutput | None:
        """The panel for one feature, or None when it has nothing to show for it."""
        raise NotImplementedError

