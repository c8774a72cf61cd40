"""`render_dashboard`: sae_dashboard's feature-centric HTML with our panels on the same
page (`dashboard.html`, self-contained, opens offline) and the per-feature data as JSON
(`features.json`)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens_attn._atomic import atomic_write_bytes
from sae_lens_attn.dashboard.config import DashboardConfig
from sae_lens_attn.dashboard.panels import DashboardContext, DashboardPanel, esc
from sae_lens_attn.errors import InvalidInputError

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.dashboard.panels import FeatureReport
    from sae_lens_attn.detectors.classes import FamilyRow
    from sae_lens_attn.sources.head_layout import HeadLayout

HTML_NAME = "dashboard.html"
SCALE_NOTE = (
    '<p class="sla-note sla-scale">Every activation on this page (sae_dashboard\'s tables, '
    "histograms and sequences, and the panels below) is an activation of the SAE as given: "
    "decoder norms are not folded in, so the same example shows the same number everywhere."
    "</p>"
)
JSON_NAME = "features.json"


@dataclass(frozen=True)
class DashboardFiles:
    html: Path
    json: Path
    skipped: tuple[int, ...] = ()  # dead features (zero or non-finite decoder row), not shown
    skipped_nonfinite: tuple[int, ...] = ()  # NaN/inf weights, skipped (`--allow-nonfinite`)


def load_panels(panels: Sequence[str | DashboardPanel] | None = None) -> list[Any]:
    """Every installed dashboard panel (in plugin order; one whose `load()` fails is warned
    about and left out), or the ones given: names are looked up among the plugins, panel
    objects are used as they are."""
    from sae_lens_attn.plugins import PluginError, get_plugin_manager

    manager = get_plugin_manager()
    if panels is None:
        installed = []
        for loaded in manager.entries("dashboard_panel"):
            try:
                installed.append(manager.get("dashboard_panel", loaded.entry.name))
            except PluginError as err:
                warnings.warn(f"{err}; the page is written without it", stacklevel=2)
        return installed
    return [
        manager.get("dashboard_panel", panel) if isinstance(panel, str) else panel
        for panel in panels
    ]


def render_panel(panel: Any, report: FeatureReport, context: DashboardContext):
    """`(name, title, html, wide)` and data of one panel; a failing panel is reported in
    its box and warned about, the rest of the page is still written."""
    try:
        output = panel.render(report, context)
    except Exception as err:  # a third-party panel must not take the page down
        warnings.warn(
            f"dashboard panel {panel.name!r} failed on feature {report.feature}: {err!r}",
            stacklevel=2,
        )
        message = f"This panel failed: {err!r}"
        return (
            panel.name,
            panel.title,
            f'<p class="sla-note sla-failed">{esc(message)}</p>',
            False,
        ), None
    if output is None:
        return None, None
    return (panel.name, panel.title, output.html, getattr(panel, "wide", False)), output.data


def render_dashboard(
    model: HookedTransformer,
    sae: SAE,
    tokens: torch.Tensor,
    features: Sequence[int],
    out_dir: str | Path,
    *,
    layout: HeadLayout | None = None,
    families: Sequence[FamilyRow] | None = None,
    config: DashboardConfig | None = None,
    panels: Sequence[str | DashboardPanel] | None = None,
    progress: bool = False,
) -> DashboardFiles:
    """Write `dashboard.html` and `features.json` for `features` of a hook_z `sae`.

    tokens: `[n_prompts, seq]` prompts to find top activations in. families: detector
    results (`FamilyRow`s, e.g. `load_family_rows("families.json")`) for the family and
    logit-lens panels. panels: the panels to show, by plugin name or as panel objects
    (default: every installed one).
    """
    from tqdm.auto import tqdm

    from sae_lens_attn.attribution.logit_lens import dead_rows
    from sae_lens_attn.dashboard.data import feature_reports
    from sae_lens_attn.dashboard.one_pass import PromptActivations
    from sae_lens_attn.dashboard.page import assemble_page, feature_section, sae_dashboard_page
    from sae_lens_attn.dashboard.sae_vis import run_sae_vis
    from sae_lens_attn.sources.head_layout import HeadLayout
    from sae_lens_attn.sources.model_inputs import check_token_rows
    from sae_lens_attn.sources.weight_check import skipped_features

    features = list(dict.fromkeys(int(f) for f in features))
    if not features:
        raise ValueError("no features to render; pass at least one feature index")
    bad = [f for f in features if not 0 <= f < sae.cfg.d_sae]
    if bad:
        raise ValueError(
            f"feature {bad[0]} is out of range; this SAE has features 0..{sae.cfg.d_sae - 1}"
        )
    nonfinite = set(skipped_features(sae))
    nonfinite_shown = tuple(f for f in features if f in nonfinite)
    dead = dead_rows(sae.W_dec.detach()[features]).tolist()
    skipped = tuple(
        f for f, is_dead in zip(features, dead, strict=True) if is_dead and f not in nonfinite
    )
    features = [
        f for f, is_dead in zip(features, dead, strict=True) if not is_dead and f not in nonfinite
    ]
    if not features:
        raise InvalidInputError(
            f"features {list(skipped + nonfinite_shown)}: all have zero decoder rows "
            "or skipped for NaN/inf weights, nothing to show; pick live features"
        )
    config = config or DashboardConfig()
    layout = layout or HeadLayout.from_sae(sae, model)
    check_token_rows(tokens, model, "dashboard prompts")
    out_dir = Path(out_dir)

    steps = tqdm(total=3 + len(features), desc="dashboard", disable=not progress, unit="step")
    steps.set_postfix_str("sae_dashboard data")
    activations = PromptActivations.collect(
        model, layout.layer, tokens, config.minibatch_size_tokens
    )
    sae_vis_data = run_sae_vis(
        model, sae, layout, tokens, features, config, activations=activations
    )
    steps.update(1)
    steps.set_postfix_str("DFA, head attribution, logit lens")
    reports = feature_reports(
        model,
        sae,
        layout,
        tokens,
        sae_vis_data,
        config.dfa_examples,
        config.logit_lens_tokens,
        families,
        activations,
    )
    steps.update(1)
    context = DashboardContext.for_model(model, sae, layout, tokens, families is not None, config)
    panel_objects = load_panels(panels)
    for panel in panel_objects:
        panel.prepare(context, reports)

    steps.set_postfix_str("panels")
    sections, records = [], []
    for report in reports:
        boxes, record = [], {"feature_index": report.feature}
        for panel in panel_objects:
            box, data = render_panel(panel, report, context)
            if box is not None:
                boxes.append(box)
            record[panel.name] = data
        sections.append(feature_section(str(report.feature), f"Feature {report.feature}", boxes))
        records.append(record)
        steps.update(1)

    steps.set_postfix_str("writing")
    first_key = str(features[0])
    page = assemble_page(
        sae_dashboard_page(sae_vis_data, context.decode, first_key),
        [SCALE_NOTE, *_skipped_notes(skipped, nonfinite_shown), *sections],
        [panel.script for panel in panel_objects if getattr(panel, "script", "")],
        first_key,
        title=f"{layout.hook_name} SAE features {features[0]}..{features[-1]}",
    )
    files = DashboardFiles(out_dir / HTML_NAME, out_dir / JSON_NAME, skipped, nonfinite_shown)
    document = {
        "skipped_dead_features": list(skipped),
        "skipped_nonfinite_features": list(nonfinite_shown),
        "hook_name": layout.hook_name,
        "head_layout": layout.to_dict(),
        "heads": list(context.head_labels),
        "panels": [panel.name for panel in panel_objects],
        "features": records,
    }
    # Both files are encoded before either is written (a NaN or a lone surrogate fails
    # here, leaving no page), then each is written under a temporary name and renamed.
    document_bytes = json.dumps(document, allow_nan=False).encode("utf-8")
    page_bytes = page.encode("utf-8", errors="replace")  # a lone surrogate in a token -> "?"
    atomic_write_bytes(files.json, document_bytes)
    atomic_write_bytes(files.html, page_bytes)
    steps.update(1)
    steps.close()
    return files


def _skipped_notes(dead: Sequence[int], nonfinite: Sequence[int]) -> list[str]:
    """Page notes listing the requested features that have no page, and why."""
    notes = []
    for features, why in (
        (dead, "zero decoder row (they write nothing)"),
        (nonfinite, "skipped: NaN or inf in their weights (--allow-nonfinite)"),
    ):
        if features:
            notes.append(
                f'<p class="sla-note sla-skipped">Features {", ".join(map(str, features))}: '
                f"{why}; no page.</p>"
            )
    return notes
