"""`train_hook_z_saes`: many hook_z SAEs from one model pass per batch, in one call."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE, LoggingConfig
from sae_lens.config import HfDataset
from transformer_lens import HookedTransformer

from sae_lens_attn.architectures.init_options import SAEInit
from sae_lens_attn.sources.head_layout import HeadLayout
from sae_lens_attn.sources.hook_z import HookZSource
from sae_lens_attn.training.configs import sae_config_for
from sae_lens_attn.training.multi_runner import (
    HookZMultiSAETrainingRunner,
    multi_runner_config,
    seeded_training_sae,
)
from sae_lens_attn.training.train import prepare_dataset, runner_options, seed_data_order


@dataclass(frozen=True)
class HookZSAESpec:
    """One SAE of a multi-SAE run: what `train_hook_z_sae` takes for a single SAE.

    `heads`: all heads of `layer` when None, else these, in this order. `sae_kwargs` are
    fields of the architecture's training config (`l1_coefficient`, `k`, ...). `name`
    names the SAE (its folder and its `saes.json` entry); default `L{layer}_{architecture}`,
    with `H{h}` per head for a head subset, e.g. `L1H3H0_block_diagonal`. `init`: a
    data-driven initialisation (`SAEInit`; default SAELens's).
    """

    layer: int
    heads: tuple[int, ...] | None = None
    architecture: str = "block_diagonal"
    sae_kwargs: Mapping[str, Any] = field(default_factory=dict)
    expansion_factor: int = 8
    d_sae: int | None = None
    per_head_norm: bool = False
    name: str | None = None
    init: SAEInit | None = None

    @property
    def sae_name(self) -> str:
        if self.name is not None:
            return self.name
        heads = "" if self.heads is None else "".join(f"H{h}" for h in self.heads)
        return f"L{self.layer}{heads}_{self.architecture}"


def train_hook_z_saes(
    model: HookedTransformer,
    specs: Sequence[HookZSAESpec],
    *,
    dataset: HfDataset | torch.Tensor | str,
    training_tokens: int = 200_000,
    context_size: int | None = None,
    lr: float = 3e-4,
    train_batch_size_tokens: int = 1024,
    store_batch_size_prompts: int = 16,
    output_path: str | Path | None = None,
    checkpoint_path: str | None = None,
    log_to_wandb: bool = False,
    wandb_project: str = "sae_lens_attn",
    device: str = "cpu",
    seed: int = 42,
    runner_kwargs: dict[str, Any] | None = None,
    resample_every_tokens: int | None = None,
    silent_bias_lift: bool = False,
) -> dict[str, tuple[SAE[Any], HeadLayout]]:
    """Train one SAE per spec with SAELens's `MultiSAETrainingRunner`, all from one
    forward pass per batch (stopped after the deepest spec's hook_z), and return
    `{name: (sae, layout)}` in the order of `specs`.

    Each SAE is what `train_hook_z_sae` with the spec's arguments and the same run
    arguments returns: same initialisation (seeded per SAE), same batches in the same
    order, its own optimizer and schedule, per-head norm, folding and layout metadata.
    With `output_path`, SAE `name` is saved to `output_path/name` (each folder published
    whole) and `output_path/saes.json` lists them (`training_l0` as their metric;
    `sae-lens-attn train` adds the evals and the dead count on held-out tokens). `runner_kwargs` are further
    `MultiSAETrainingRunnerConfig` fields; `resample_every_tokens` and
    `silent_bias_lift` as in `train_hook_z_sae`, for every SAE. A learning rate shared by all SAEs is
    SAELens's multi-SAE design; sweep sparsity through `sae_kwargs`.
    """
    if not specs:
        raise ValueError("train_hook_z_saes needs at least one SAE spec")
    names = [spec.sae_name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"SAE names must be unique, got {duplicates} more than once; give each spec a name")
    dataset_path, override_dataset, context_size = prepare_dataset(dataset, context_size)
    sources = {
        spec.sae_name: HookZSource(model, spec.layer, spec.heads, per_head_norm=spec.per_head_norm)
        for spec in specs
    }
    sae_configs = {
        spec.sae_name: sae_config_for(
            sources[spec.sae_name], spec.architecture, spec.expansion_factor, spec.d_sae,
            device=device, **spec.sae_kwargs,
        )
        for spec in specs
    }
    saes = {name: seeded_training_sae(sae_cfg, seed) for name, sae_cfg in sae_configs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(output_path) if output_path is not None else Path(tmp)
        cfg = multi_runner_config(
            sources,
            sae_configs,
            model_name=model.cfg.model_name,
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
            output_path=str(out),
            model_from_pretrained_kwargs={},  # the model is given, not loaded
            **runner_options(context_size, train_batch_size_tokens, runner_kwargs or {}),
        )
        runner = HookZMultiSAETrainingRunner(
            cfg, sources, override_dataset=override_dataset, override_saes=saes,
            inits={spec.sae_name: spec.init for spec in specs if spec.init is not None},
            resample_every_tokens=resample_every_tokens, silent_bias_lift=silent_bias_lift,
        )
        seed_data_order(seed)
        runner.run()
        return {
            name: (SAE.load_from_disk(out / runner.folders[name], device=device), runner.sources[name].layout)
            for name in names
        }
