"""`run_demo`: the whole pipeline on one model, each step done by the module that owns it.

hook_z of layer 1 -> a block-diagonal and a dense SAE trained together from one model
pass per batch by SAELens's multi-SAE runner (`train_hook_z_saes`), so both see the same
activations in the same order -> SAELens's evals (`evaluate_hook_z_sae`), dead
share and per-head L0 -> every installed detector plugin -> dashboards
(`render_dashboard`) -> `report.md` and `index.html` (`sae_lens_attn.demo.report`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from sae_lens_attn.demo.result import DemoResult, SAEResult
from sae_lens_attn.demo.settings import ARCHITECTURES, DemoSettings
from sae_lens_attn.detectors.activity import feature_activity

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.detectors.classes import FamilyRow
    from sae_lens_attn.sources.head_layout import HeadLayout

INDUCTION = ("induction", "induction")  # (detector, family) of "<token> is next by induction"


@contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - start, 1)


def model_summary(model: HookedTransformer, name: str, layer: int) -> dict[str, Any]:
    cfg = model.cfg
    return {
        "name": name,
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "n_heads": cfg.n_heads,
        "d_head": cfg.d_head,
        "d_vocab": cfg.d_vocab,
        "n_ctx": cfg.n_ctx,
        "hook_name": f"blocks.{layer}.attn.hook_z",
    }


def corpus_splits(
    model: HookedTransformer, settings: DemoSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """`([train_sequences, ctx], [eval_sequences, ctx])` stdlib-corpus tokens in the model's
    own tokenizer (the embedded one, or a hub model's)."""
    from sae_lens_attn.models.dataset import corpus_tokens

    if model.tokenizer is None:
        raise ValueError("the demo needs a model with a tokenizer to tokenize its corpus")
    if settings.context_size > model.cfg.n_ctx:
        raise ValueError(
            f"context_size {settings.context_size} exceeds the model's n_ctx {model.cfg.n_ctx}"
        )
    train = corpus_tokens(model.tokenizer, settings.context_size, settings.train_sequences, "train")
    test = corpus_tokens(model.tokenizer, settings.context_size, settings.eval_sequences, "test")
    return train, test


def run_detectors(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    tokens: torch.Tensor,
    settings: DemoSettings,
) -> tuple[list[FamilyRow], dict[str, str]]:
    """Every installed detector plugin on `sae`; a failing detector is warned about and
    reported by name, the others still run."""
    from sae_lens_attn.plugins import get_plugin_manager

    rows: list[FamilyRow] = []
    errors: dict[str, str] = {}
    for loaded in get_plugin_manager().entries("detector"):
        name = loaded.entry.name
        try:
            detector = loaded.entry.load()
            rows.extend(
                detector.detect(
                    model,
                    sae,
                    layout,
                    tokens=tokens,
                    family_rows=list(rows),
                    n_prompts=settings.detector_prompts,
                    progress=True,
                )
            )
        except Exception as error:  # a third-party detector must not end the demo
            errors[name] = f"{type(error).__name__}: {error}"
            warnings.warn(f"detector {name!r} failed: {errors[name]}", stacklevel=2)
    return rows, errors


def induction_members(rows: list[FamilyRow]) -> list[int]:
    detector, family = INDUCTION
    return sorted(r.feature for r in rows if r.detector == detector and r.family == family)


def carrying_heads(sae: SAE, layout: HeadLayout, features: list[int]) -> dict[str, int]:
    """Head label -> how many of `features` have it as their dominant decoder head."""
    from sae_lens_attn.attribution.heads import sae_head_attribution

    if not features:
        return {}
    dominant = sae_head_attribution(sae, layout.n_heads, features).argmax(dim=1).tolist()
    counts: dict[str, int] = {}
    for index in dominant:
        label = layout.head_labels[index]
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def features_to_show(
    sae: SAE, layout: HeadLayout, live: list[int], n: int, extra: list[int]
) -> list[int]:
    """The first `n` live features taken round-robin over their dominant heads (so a
    block-diagonal SAE shows every head, not just head 0's block), then `extra`."""
    from sae_lens_attn.attribution.heads import sae_head_attribution

    chosen: list[int] = []
    if live and n > 0:
        dominant = sae_head_attribution(sae, layout.n_heads, live).argmax(dim=1).tolist()
        per_head: dict[int, list[int]] = {}
        for feature, head in zip(live, dominant, strict=True):
            per_head.setdefault(head, []).append(feature)
        queues = [per_head[h] for h in sorted(per_head)]
        while len(chosen) < n and any(queues):
            for queue in queues:
                if queue and len(chosen) < n:
                    chosen.append(queue.pop(0))
    return list(dict.fromkeys(chosen + extra))


def train_demo_saes(
    model: HookedTransformer, train_tokens: torch.Tensor, out: Path, settings: DemoSettings
) -> dict[str, tuple[SAE, HeadLayout]]:
    """Every demo architecture trained from the same model passes; each SAE saved to
    `out / architecture / "sae"` (published whole). `{architecture: (sae, layout)}`."""
    from sae_lens_attn._atomic import atomic_directory
    from sae_lens_attn.training.multi_training import HookZSAESpec, train_hook_z_saes

    specs = [
        HookZSAESpec(
            settings.layer,
            architecture=architecture,
            sae_kwargs=settings.sae_kwargs.get(architecture, {}),
            expansion_factor=settings.expansion_factor,
            name=architecture,
        )
        for architecture in ARCHITECTURES
    ]
    trained = train_hook_z_saes(
        model,
        specs,
        dataset=train_tokens,
        training_tokens=settings.training_tokens,
        train_batch_size_tokens=settings.train_batch_size_tokens,
        lr=settings.lr,
        seed=settings.seed,
    )
    for architecture, (sae, _) in trained.items():
        with atomic_directory(out / architecture / "sae") as folder:
            sae.save_model(folder)
    return trained


def demo_one_sae(
    model: HookedTransformer,
    architecture: str,
    trained: tuple[SAE, HeadLayout],
    eval_tokens: torch.Tensor,
    out: Path,
    settings: DemoSettings,
    step: Callable[[str], None],
) -> SAEResult:
    """Evaluate, detect and render one trained SAE into `out / architecture`."""
    from sae_lens_attn.attribution.head_evals import evaluate_heads
    from sae_lens_attn.dashboard import DashboardConfig, render_dashboard
    from sae_lens_attn.detectors.results import family_summary, save_family_rows
    from sae_lens_attn.training.evaluation import evaluate_hook_z_sae

    sae, layout = trained
    folder = out / architecture
    seconds: dict[str, float] = {}
    step(f"{architecture}: SAELens evals, per-head evals, dead share, per-head L0")
    with _timed(seconds, "evaluate"):
        n_eval = settings.eval_batches * settings.eval_batch_prompts
        metrics = evaluate_hook_z_sae(
            sae,
            model,
            eval_tokens[:n_eval],
            n_batches=settings.eval_batches,
            batch_size_prompts=settings.eval_batch_prompts,
        )
        activity = feature_activity(model, sae, layout, eval_tokens)
        head_evals = evaluate_heads(
            model,
            sae,
            layout,
            eval_tokens[:n_eval],  # dead: on all eval tokens
            batch_size=settings.eval_batch_prompts,
            dead=activity.dead,
        ).to_dict()
    step(f"{architecture}: detectors")
    with _timed(seconds, "detect"):
        rows, errors = run_detectors(model, sae, layout, eval_tokens, settings)
        _, families_json = save_family_rows(rows, folder / "families", head_evals=head_evals)
        induction = induction_members(rows)
    dashboard, shown = None, []
    step(f"{architecture}: dashboards")
    if architecture in settings.dashboard_architectures:
        with _timed(seconds, "dashboard"):
            shown = features_to_show(
                sae, layout, activity.live_features(), settings.dashboard_live_features, induction
            )
            if shown:
                files = render_dashboard(
                    model,
                    sae,
                    eval_tokens[: settings.dashboard_prompts],
                    shown,
                    folder / "dashboard",
                    layout=layout,
                    families=rows,
                    config=DashboardConfig(),
                    progress=True,
                )
                dashboard = files.html.relative_to(out)
    return SAEResult(
        architecture=architecture,
        folder=folder.relative_to(out),
        d_sae=sae.cfg.d_sae,
        metrics=metrics,
        activity=activity,
        head_labels=layout.head_labels,
        families_json=families_json.relative_to(out),
        family_summary=family_summary(rows),
        detector_errors=errors,
        induction_features=induction,
        induction_heads=carrying_heads(sae, layout, induction),
        dashboard=dashboard,
        dashboard_features=shown,
        seconds=seconds,
        head_evals=head_evals,
    )


def run_demo(
    out: str | Path,
    settings: DemoSettings,
    model_name: str = "embedded",
    model: HookedTransformer | None = None,
) -> DemoResult:
    """Run the demo into `out` and write `report.md` and `index.html` there.

    `model` skips loading `model_name` (tests pass a model they already have).
    """
    from sae_lens_attn.demo.report import write_report
    from sae_lens_attn.models.embedded import load_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    steps = tqdm(total=3 + 3 * len(ARCHITECTURES), desc="demo", unit="step")

    started = False

    def step(description: str) -> None:  # finishes the previous step, names the next
        nonlocal started
        if started:
            steps.update(1)
        started = True
        steps.set_description(f"demo: {description}")

    step(f"loading {model_name} and its corpus")
    with _timed(seconds, "model and corpus"):
        if model is None:
            model = load_model(model_name)
        train_tokens, eval_tokens = corpus_splits(model, settings)
    step(f"training the {' and '.join(ARCHITECTURES)} SAEs from one model pass per batch")
    with _timed(seconds, "training (all SAEs, one pass)"):
        trained = train_demo_saes(model, train_tokens, out, settings)
    results = [
        demo_one_sae(model, architecture, trained[architecture], eval_tokens, out, settings, step)
        for architecture in ARCHITECTURES
    ]
    step("writing the report")
    result = DemoResult(
        model_name, model_summary(model, model_name, settings.layer), settings, results, seconds
    )
    seconds["total"] = round(time.perf_counter() - start, 1)
    result.report, result.index = write_report(result, out)
    steps.update(1)
    steps.close()
    return result
