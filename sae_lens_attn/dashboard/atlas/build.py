"""`build_atlas`: every live feature of a hook_z SAE as a static site that opens offline.

Steps: which features are live (a nonzero, finite decoder row, and firing at least once
on the prompts: `feature_activity`, one model pass); detector rows (the taxonomy class and
families: run here, or given); then one shard per `shard_size` feature indices, each
computed as the dashboard computes its features (sae_dashboard's data for the shard's
features from the run's one model pass over the prompts, `one_pass`; our
`feature_reports` and every panel, batched per shard) and
written at once, so memory holds one shard, not the atlas. A shard's index rows are
written last, then the checksums of its files go into `atlas.json`; `--resume` skips a
shard whose files match them and computes any other again. Finally the
index data is written and the staging folder is published (`site.publish`).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens_attn._atomic import atomic_write_text
from sae_lens_attn.dashboard.atlas.pages import (
    DATA_DIR,
    FEATURE_NAME,
    INDEX_DATA,
    INDEX_NAME,
    packed_json,
    rows_name,
    shard_name,
    write_data_script,
    write_feature_page,
    write_static_files,
)
from sae_lens_attn.dashboard.atlas.site import (
    MARKER,
    check_site,
    publish,
    read_marker,
    record_shard,
    shard_is_intact,
    start_staging,
    write_marker,
)
from sae_lens_attn.dashboard.config import DashboardConfig
from sae_lens_attn.errors import InvalidInputError

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.dashboard.one_pass import PromptActivations
    from sae_lens_attn.dashboard.panels import DashboardContext, DashboardPanel, FeatureReport
    from sae_lens_attn.detectors.results import FamilyRow
    from sae_lens_attn.sources.head_layout import HeadLayout

TAXONOMY = "taxonomy"
FAMILIES_NAME = "families.json"


@dataclass(frozen=True)
class AtlasConfig:
    """How the atlas is cut and what it shows. `shard_size`: feature indices per data
    file (and per batched computation); `detectors`: run to classify features when no
    families are given (empty: none, the index then shows no classes); `top_tokens`:
    promoted tokens per index row; `dashboard`: the feature page's sizes."""

    shard_size: int = 128
    detectors: tuple[str, ...] = ("logit_lens", TAXONOMY)
    top_tokens: int = 5
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)

    def __post_init__(self) -> None:
        if self.shard_size < 1 or self.top_tokens < 0:
            raise ValueError(
                f"shard_size {self.shard_size} must be >= 1 and top_tokens {self.top_tokens} >= 0"
            )


@dataclass(frozen=True)
class AtlasFiles:
    """The published site, its index page, how many features it shows, whether the run
    continued an unfinished one, and how many selected features were left out as dead."""

    site: Path
    index: Path
    n_features: int
    resumed: bool
    left_out: int


def build_atlas(
    model: HookedTransformer,
    sae: SAE,
    tokens: torch.Tensor,
    out: str | Path,
    *,
    features: Sequence[int] | None = None,
    families: Sequence[FamilyRow] | None = None,
    config: AtlasConfig | None = None,
    panels: Sequence[str | DashboardPanel] | None = None,
    layout: HeadLayout | None = None,
    resume: bool = False,
    progress: bool = False,
    title: str | None = None,
) -> AtlasFiles:
    """Write the atlas of `sae` into the folder `out` (new, empty, or an earlier atlas).

    tokens: `[n_prompts, seq]` prompts searched for activations. features: indices to
    include (default: all; dead ones are left out either way). families: detector rows
    (`load_family_rows("families.json")`) instead of running `config.detectors`.
    resume: continue an unfinished atlas of the same settings in the staging folder.
    """
    from tqdm.auto import tqdm

    from sae_lens_attn.attribution.logit_lens import unembed_through_final_ln
    from sae_lens_attn.dashboard.one_pass import PromptActivations
    from sae_lens_attn.dashboard.panels import DashboardContext
    from sae_lens_attn.dashboard.render import load_panels
    from sae_lens_attn.dashboard.sae_vis import dashboard_copy
    from sae_lens_attn.runtime import release_freed_memory
    from sae_lens_attn.sources.head_layout import HeadLayout
    from sae_lens_attn.sources.model_inputs import check_token_rows

    out = Path(out)
    check_site(out)
    config = config or AtlasConfig()
    layout = layout or HeadLayout.from_sae(sae, model)
    check_token_rows(tokens, model, "atlas prompts")
    selected = _selected(features, sae.cfg.d_sae)
    panel_objects = load_panels(panels)
    settings = _settings(sae, layout, tokens, selected, families, config, panel_objects)
    staging, resumed = start_staging(out, settings, resume)

    live = live_features(model, sae, layout, tokens, selected)
    if not live:
        raise InvalidInputError(
            f"none of the {len(selected)} selected features is live (each has a "
            "zero decoder row or never fires on the prompts); nothing to show"
        )
    rows, classes_note = _family_rows(model, sae, layout, tokens, live, families, config, staging)
    by_feature: dict[int, list[FamilyRow]] = defaultdict(list)
    for row in rows or ():
        by_feature[row.feature].append(row)
    write_static_files(staging)
    context = DashboardContext.for_model(
        model, sae, layout, tokens, rows is not None, config.dashboard
    )
    shards: dict[int, list[int]] = defaultdict(list)
    for feature in live:
        shards[feature // config.shard_size].append(feature)
    neighbours = {
        f: (live[i - 1] if i else None, live[i + 1] if i + 1 < len(live) else None)
        for i, f in enumerate(live)
    }
    bar = tqdm(total=len(live), desc="atlas", unit="feature", disable=not progress, smoothing=0.1)
    data_dir = staging / DATA_DIR
    data_dir.mkdir(exist_ok=True)
    # one dense copy for sae_dashboard for the whole run: a new one per shard left the heap
    # fragmented, and the peak grew with the number of shards
    dense = dashboard_copy(sae, layout)
    # one model pass over the prompts for every shard's examples, histograms and DFA
    activations = PromptActivations.collect(
        model, layout.layer, tokens, config.dashboard.minibatch_size_tokens
    )
    unembed = unembed_through_final_ln(model)  # once, not once per shard (~0.5 s each)
    marker = read_marker(staging)
    for shard, shard_features in shards.items():
        intact = (staging / FEATURE_NAME).is_file() and shard_is_intact(staging, shard, marker)
        if resumed and not intact and (data_dir / rows_name(shard)).is_file():
            warnings.warn(
                f"--resume: shard {shard}'s files do not match the checksums in {MARKER} "
                "(changed or damaged); computing it again",
                stacklevel=2,
            )
        if not intact:
            _write_shard(
                staging,
                shard,
                shard_features,
                context,
                panel_objects,
                by_feature,
                neighbours,
                config,
                dense,
                activations,
                unembed,
            )
            record_shard(
                staging, shard, [data_dir / shard_name(shard), data_dir / rows_name(shard)]
            )
            release_freed_memory()
        bar.update(len(shard_features))
    bar.close()

    index_rows = [
        row
        for shard in shards
        for row in json.loads((data_dir / rows_name(shard)).read_text(encoding="utf-8"))
    ]
    write_data_script(
        data_dir / INDEX_DATA,
        "slaAtlasIndex",
        {
            "title": title or f"{layout.hook_name} SAE",
            "meta": (
                f"{len(live)} live features of {sae.cfg.d_sae} ({len(selected)} selected) on "
                f"{layout.hook_name}, heads {', '.join(layout.head_labels)}; activations on "
                f"{tokens.shape[0]} prompts of {tokens.shape[1]} tokens"
            ),
            "classes_note": classes_note,
            "heads": list(layout.head_labels),
            "rows": index_rows,
        },
    )
    write_marker(staging, settings, complete=True, n_features=len(live))
    publish(staging, out)
    return AtlasFiles(out, out / INDEX_NAME, len(live), resumed, len(selected) - len(live))


def _selected(features: Sequence[int] | None, d_sae: int) -> list[int]:
    if features is None:
        return list(range(d_sae))
    chosen = list(dict.fromkeys(int(f) for f in features))
    bad = [f for f in chosen if not 0 <= f < d_sae]
    if bad:
        raise InvalidInputError(
            f"feature {bad[0]} is out of range; this SAE has features 0..{d_sae - 1}"
        )
    if not chosen:
        raise InvalidInputError("no features selected; pass at least one feature index")
    return chosen


def live_features(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    tokens: torch.Tensor,
    selected: list[int],
) -> list[int]:
    """The `selected` features, ascending, with a finite nonzero decoder row that fire on
    `tokens` at least once."""
    from sae_lens_attn.attribution.logit_lens import dead_rows
    from sae_lens_attn.detectors.activity import feature_activity

    fires = feature_activity(model, sae, layout, tokens).live
    dead = dead_rows(sae.W_dec.detach().cpu())
    return sorted(f for f in selected if bool(fires[f]) and not bool(dead[f]))


def _checksum(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(
            part.detach().cpu().contiguous().numpy().tobytes()
            if hasattr(part, "numpy")
            else json.dumps(part, sort_keys=True, default=str).encode()
        )
    return digest.hexdigest()[:16]


def _settings(
    sae: SAE,
    layout: HeadLayout,
    tokens: torch.Tensor,
    selected: list[int],
    families: Sequence[FamilyRow] | None,
    config: AtlasConfig,
    panels: list,
) -> dict[str, Any]:
    """What an atlas depends on, as `atlas.json` records it (`--resume` compares it)."""
    return {
        "hook_name": layout.hook_name,
        "heads": list(layout.heads),
        "d_sae": int(sae.cfg.d_sae),
        "sae": _checksum(*(tensor for _, tensor in sorted(sae.state_dict().items()))),
        "tokens": _checksum(tokens),
        "features": _checksum(selected),
        "families": None if families is None else _checksum([row.to_dict() for row in families]),
        "config": json.loads(json.dumps(asdict(config), default=list)),
        "panels": [panel.name for panel in panels],
    }


def _family_rows(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    tokens: torch.Tensor,
    live: list[int],
    families: Sequence[FamilyRow] | None,
    config: AtlasConfig,
    staging: Path,
) -> tuple[list[FamilyRow] | None, str]:
    """Detector rows and the index's note on where the classes come from. Rows computed
    here are saved in the site (`families.json`, read back on `--resume`)."""
    from sae_lens_attn.detectors.results import load_family_rows, save_family_rows

    if families is not None:
        rows = list(families)
        source = "from the families file given (sae-lens-attn detect)"
    elif not config.detectors:
        return None, (
            "No detectors ran, so features have no class or family: run `sae-lens-attn "
            "atlas` without --detectors none, or pass --families families.json."
        )
    elif (staging / FAMILIES_NAME).is_file():
        rows = load_family_rows(staging / FAMILIES_NAME)
        source = f"from the detectors {', '.join(config.detectors)} (run by this atlas)"
    else:
        rows = run_detectors(model, sae, layout, tokens, live, config.detectors)
        source = f"from the detectors {', '.join(config.detectors)} (run by this atlas)"
    save_family_rows(rows, staging)
    classified = any(row.detector == TAXONOMY for row in rows)
    note = "Classes (source-signature taxonomy) and families " + source + "."
    if not classified:
        note += " No taxonomy rows: the class column is empty."
    return rows, note


def run_detectors(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    tokens: torch.Tensor,
    features: list[int],
    names: Sequence[str],
) -> list[FamilyRow]:
    """The named detector plugins on `features`, each given the rows of those before it
    (the taxonomy reuses its components' rows), `tokens` deciding which features are live."""
    from sae_lens_attn.plugins import get_plugin_manager

    manager = get_plugin_manager()
    rows: list[FamilyRow] = []
    for name in names:
        detector = manager.get("detector", name)
        detect = getattr(detector, "detect", detector)
        rows.extend(
            detect(
                model, sae, layout, family_rows=list(rows), features=features, tokens=tokens, seed=0
            )
        )
    return rows


def _write_shard(
    staging: Path,
    shard: int,
    features: list[int],
    context: DashboardContext,
    panels: list,
    by_feature: dict[int, list[FamilyRow]],
    neighbours: dict[int, tuple[int | None, int | None]],
    config: AtlasConfig,
    dense: SAE,
    activations: PromptActivations,
    unembed: torch.Tensor,
) -> None:
    """Compute and write one shard: its data script, then its index rows. `dense`: the
    run's `dashboard_copy` of the SAE, which sae_dashboard's data reads; `activations`:
    the run's one model pass over the prompts; `unembed`: `unembed_through_final_ln`."""
    from sae_lens_attn.dashboard.data import feature_reports
    from sae_lens_attn.dashboard.page import feature_section, sae_dashboard_js_data
    from sae_lens_attn.dashboard.render import render_panel
    from sae_lens_attn.dashboard.sae_vis import run_sae_vis

    model, sae, layout, tokens = context.model, context.sae, context.layout, context.tokens
    sae_vis_data = run_sae_vis(
        model, sae, layout, tokens, features, config.dashboard, dense=dense, activations=activations
    )
    families = [row for f in features for row in by_feature.get(f, ())]
    reports = feature_reports(
        model,
        sae,
        layout,
        tokens,
        sae_vis_data,
        config.dashboard.dfa_examples,
        config.dashboard.logit_lens_tokens,
        families if context.detectors_ran else None,
        activations,
        unembed,
    )
    for panel in panels:
        panel.prepare(context, reports)
    if not (staging / FEATURE_NAME).is_file():
        write_feature_page(
            staging,
            sae_vis_data,
            context.decode,
            [panel.script for panel in panels if getattr(panel, "script", "")],
            config.shard_size,
        )
    _, sae_vis_js = sae_dashboard_js_data(sae_vis_data, context.decode)
    stats = sae_vis_data.feature_stats
    entries, index_rows = {}, []
    for i, report in enumerate(reports):
        boxes = [
            box for panel in panels if (box := render_panel(panel, report, context)[0]) is not None
        ]
        previous, following = neighbours[report.feature]
        entries[str(report.feature)] = packed_json(
            {
                "sae_vis": sae_vis_js[str(report.feature)],
                "panels": feature_section(str(report.feature), f"Feature {report.feature}", boxes),
                "prev": previous,
                "next": following,
            }
        )
        index_rows.append(
            index_row(report, context, stats.max[i], stats.frac_nonzero[i], config.top_tokens)
        )
    write_data_script(staging / DATA_DIR / shard_name(shard), "slaAtlasShard", entries)
    atomic_write_text(
        staging / DATA_DIR / rows_name(shard), json.dumps(index_rows, allow_nan=False)
    )


def index_row(
    report: FeatureReport,
    context: DashboardContext,
    max_act: float,
    density: float,
    top_tokens: int,
) -> dict[str, Any]:
    """One row of the index table (token text as display strings: the page shows it as text)."""
    labels = context.head_labels
    head = max(range(len(labels)), key=lambda h: report.decoder_heads[h])
    taxonomy = next((row for row in report.families if row.detector == TAXONOMY), None)
    lens = report.logit_lens
    return {
        "feature": report.feature,
        "class": taxonomy.family if taxonomy is not None else None,
        "families": sorted(
            {row.family for row in report.families if row.family and row.detector != TAXONOMY}
        ),
        "head": labels[head],
        "head_share": _finite(report.decoder_heads[head]),
        "density": _finite(density),
        "max_act": _finite(max_act),
        "top_tokens": [context.decode(token) for token, _ in (lens.top if lens else ())][
            :top_tokens
        ],
    }


def _finite(value: float) -> float:
    value = float(value)
    return round(value, 6) if math.isfinite(value) else 0.0
