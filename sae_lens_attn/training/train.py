"""`train_hook_z_sae`: train an SAE on hook_z with SAELens's runner, offline, in one call."""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE, LanguageModelSAERunnerConfig, LoggingConfig
from sae_lens.config import HfDataset
from transformer_lens import HookedTransformer

from sae_lens_attn.architectures.init_options import SAEInit
from sae_lens_attn.dead import DEAD_WINDOW_TOKENS
from sae_lens_attn.sources.head_layout import HeadLayout
from sae_lens_attn.sources.hook_z import HookZSource
from sae_lens_attn.sources.tokens import as_token_dataset, row_length
from sae_lens_attn.training.configs import sae_config_for
from sae_lens_attn.training.outputs import publish_sae_folder, staging_folder
from sae_lens_attn.training.parallel.base import Parallelism
from sae_lens_attn.training.parallel.distributed import rank_device
from sae_lens_attn.training.parallel.modes import parallel_training
from sae_lens_attn.training.runner import HookZTrainingRunner


def train_hook_z_sae(
    model: HookedTransformer,
    layer: int,
    heads: Sequence[int] | None = None,
    architecture: str = "block_diagonal",
    *,
    dataset: HfDataset | torch.Tensor | str,
    training_tokens: int = 200_000,
    context_size: int | None = None,
    expansion_factor: int = 8,
    d_sae: int | None = None,
    lr: float = 3e-4,
    train_batch_size_tokens: int = 1024,
    store_batch_size_prompts: int = 16,
    per_head_norm: bool = False,
    sae_kwargs: dict[str, Any] | None = None,
    output_path: str | Path | None = None,
    checkpoint_path: str | None = None,
    log_to_wandb: bool = False,
    wandb_project: str = "sae_lens_attn",
    device: str = "cpu",
    seed: int = 42,
    runner_kwargs: dict[str, Any] | None = None,
    parallel: str | Parallelism | None = None,
    checkpoint_every: int | None = None,
    resume_from: str | Path | None = None,
    init: SAEInit | None = None,
    resample_every_tokens: int | None = None,
    silent_bias_lift: bool = False,
) -> tuple[SAE[Any], HeadLayout]:
    """Train an SAE on `blocks.{layer}.attn.hook_z` (all heads or `heads`, in that order)
    with SAELens's `LanguageModelSAETrainingRunner` and return `(sae, layout)`.

    The returned SAE is SAELens's inference SAE as saved by the runner (to `output_path`,
    published there only once complete, or to a temporary folder): it takes raw hook_z (any per-head scale is folded in), holds
    its `HeadLayout` in `cfg.metadata["head_layout"]`, and on all heads has
    `reshape_activations="hook_z"`, so `HookedSAETransformer` splices it in at hook_z.
    The trainer records `cfg.metadata.l0` (and SAELens's `num_dead_features`, silent for
    `dead_feature_window` steps: not our "dead", see `sae_lens_attn.dead` and
    `count_firings`); for CE loss and
    explained variance call `evaluate_hook_z_sae(sae, model, dataset)`.

    `dataset` is pretokenized (`input_ids`/`tokens` rows), a `[n_seq, pos]` token
    tensor (`context_size` defaults to its row length), or a Hugging Face dataset path
    that SAELens loads itself (needs the hub and `context_size`). `sae_kwargs` are fields
    of the architecture's training config (`l1_coefficient`, `k`, `activation`, ...);
    `runner_kwargs` are further `LanguageModelSAERunnerConfig` fields. Nothing touches the
    network unless `log_to_wandb`; no checkpoints unless `checkpoint_path` is given.

    Under torchrun, `parallel` is "data" (the default there) or "heads" (see
    `sae_lens_attn.training.parallel.base`); every rank returns the SAE rank 0 saved.
    `checkpoint_every` N steps (into `checkpoint_path`) and `resume_from` a `step_N`
    checkpoint folder: see `HookZTrainingRunner`. `init` (`SAEInit`): b_dec from the
    data's mean or geometric median and decoder rows in each head's active subspace,
    from the first training batches (default: SAELens's initialisation).
    `resample_every_tokens`: move dead features onto the reconstruction error every that
    many training tokens until 80% of the run (`sae_lens_attn.training.resampling`;
    default None: never; one process only). `silent_bias_lift`: after every step, raise
    `b_enc` of each feature of a per-head TopK SAE that did not fire on the batch to the
    edge of firing (`sae_lens_attn.training.silent_bias`; `sae-lens-attn train` does by
    default; default False here; one process only).
    """
    device = rank_device(device)
    source = HookZSource(model, layer, heads, per_head_norm=per_head_norm)
    dataset_path, override_dataset, context_size = prepare_dataset(dataset, context_size)
    sae_cfg = sae_config_for(
        source, architecture, expansion_factor, d_sae, device=device, **(sae_kwargs or {})
    )
    options = runner_options(
        context_size, train_batch_size_tokens, {"verbose": False, **(runner_kwargs or {})}
    )
    torch.manual_seed(seed)  # SAELens does not seed: SAE init, then (below) buffer shuffling
    with (
        parallel_training(parallel, device) as plan,
        # only rank 0 saves: the other ranks get a scratch folder and publish nothing
        output_folder(output_path if plan.is_main else None) as (staged, publish),
    ):
        cfg = LanguageModelSAERunnerConfig(
            sae=sae_cfg,
            model_name=model.cfg.model_name,
            hook_name=source.hook_name,
            dataset_path=dataset_path,
            context_size=context_size,
            training_tokens=training_tokens,
            train_batch_size_tokens=train_batch_size_tokens,
            store_batch_size_prompts=store_batch_size_prompts,
            lr=lr,
            device=device,
            seed=seed,
            logger=LoggingConfig(log_to_wandb=log_to_wandb, wandb_project=wandb_project),
            checkpoint_path=checkpoint_path,
            output_path=str(staged),
            model_from_pretrained_kwargs={},  # the model is given, not loaded
            **options,
        )
        runner = HookZTrainingRunner(
            cfg, source, override_dataset=override_dataset, parallel=plan,
            checkpoint_every=checkpoint_every, resume_from=resume_from, init=init,
            resample_every_tokens=resample_every_tokens, silent_bias_lift=silent_bias_lift,
        )
        seed_data_order(seed)
        runner.run()
        sae = plan.load_saved_sae(staged, device)
        publish(staged)
    return sae, source.layout


def prepare_dataset(
    dataset: HfDataset | torch.Tensor | str, context_size: int | None
) -> tuple[str, HfDataset | None, int]:
    """`(dataset_path, override_dataset, context_size)` for SAELens's runner configs: a
    hub path stays a path (and needs `context_size`); tokens become a dataset whose row
    length is the default `context_size`."""
    dataset_path = dataset if isinstance(dataset, str) else ""
    override_dataset = None if isinstance(dataset, str) else as_token_dataset(dataset)
    if context_size is None:
        if override_dataset is None:
            raise ValueError(f"context_size is needed to train on dataset path {dataset!r}")
        context_size = row_length(override_dataset)
    return dataset_path, override_dataset, context_size


def dead_feature_window(window_tokens: int, train_batch_size_tokens: int) -> int:
    """SAELens's `dead_feature_window` (training steps) covering `window_tokens` tokens:
    a feature silent for that many steps counts as dead for the TopK auxiliary loss."""
    return max(1, math.ceil(window_tokens / train_batch_size_tokens))


def runner_options(
    context_size: int, train_batch_size_tokens: int, overrides: dict[str, Any]
) -> dict[str, Any]:
    """Runner config fields we default differently from SAELens, then `overrides`."""
    return {
        # the shuffling buffer must hold at least one training batch (twice, to mix)
        "n_batches_in_buffer": max(4, math.ceil(2 * train_batch_size_tokens / context_size)),
        "n_eval_batches": 2,
        # SAELens's 1000 steps (4M tokens at batch 4096) never ends in a short run, so the
        # TopK auxiliary loss would never act: count DEAD_WINDOW_TOKENS tokens instead
        "dead_feature_window": dead_feature_window(DEAD_WINDOW_TOKENS, train_batch_size_tokens),
        **overrides,
    }


def seed_data_order(seed: int) -> None:
    """Seed the global RNG that SAELens's shuffling buffer draws from, right before
    training. After the SAE's own seeded initialisation, so every SAE trained with the
    same seed on the same tokens sees the same batches in the same order, whatever its
    architecture and whether it trains alone or beside others."""
    torch.manual_seed(seed)


@contextmanager
def output_folder(output_path: str | Path | None) -> Iterator[tuple[Path, Callable[[Path], None]]]:
    """`(staged, publish)`: a folder to save into and a function that moves what was saved
    there into `output_path` whole (`publish_sae_folder`); without `output_path`, a
    temporary folder and a publish that does nothing."""
    if output_path is None:
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp), lambda staged: None
        return
    with staging_folder(output_path) as staged:
        yield staged, lambda folder: publish_sae_folder(folder, output_path)
