"""`HookZTrainingRunner`: SAELens's `LanguageModelSAETrainingRunner` fed by a `HookZSource`.

SAELens's runner has no notion of an activation source, so this subclass changes
exactly three things and keeps everything else (the `SAETrainer` loop, evals, W&B,
checkpoints, saving):
- after construction, its `activations_store` (and the evaluator's) is a
  `HookZActivationsStore` reading the source (the seam upstream-notes lists as verified);
- `run_trainer_with_interruption_handling`, which wraps `SAETrainer.fit`, finishes the SAE
  right after fit and before the runner saves it: the per-head scale is folded in, the
  `HeadLayout` is stored in the metadata and `reshape_activations="hook_z"` is set;
- `save_checkpoint` also writes the source's state (layout, per-head scale).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, TrainingSAE
from sae_lens.config import HfDataset
from typing_extensions import override

from sae_lens_attn._upstream import disable_datasets_torchvision_formatting, progress_every_step
from sae_lens_attn.sources.evaluation import HookZEvaluator
from sae_lens_attn.sources.folding import fold_input_scale
from sae_lens_attn.sources.hook_z import STATE_FILENAME, HookZSource
from sae_lens_attn.sources.store import HookZActivationsStore, check_config_matches_source

# SAELens normalisations that commute with a per-head diagonal scale and are folded
# before it; the others normalise inside the SAE or mix heads.
PER_HEAD_NORM_COMPATIBLE = ("none", "expected_average_only_in")


class HookZTrainingRunner(LanguageModelSAETrainingRunner):
    """Train an SAE on a `HookZSource` with SAELens's own runner.

    `cfg` is an ordinary `LanguageModelSAERunnerConfig` with `hook_name` equal to the
    source's and `sae.d_in` equal to `source.d_in`; the model is the source's. With
    `per_head_norm`, the scale is estimated from `n_batches_for_head_norm` LLM batches
    (or read from the checkpoint or activation cache) before training.
    """

    source: HookZSource

    def __init__(
        self,
        cfg: LanguageModelSAERunnerConfig[Any],
        source: HookZSource,
        override_dataset: HfDataset | None = None,
        override_sae: TrainingSAE[Any] | None = None,
        n_batches_for_head_norm: int = 8,
    ) -> None:
        check_config_matches_source(cfg, source)
        if source.per_head_norm and cfg.sae.normalize_activations not in PER_HEAD_NORM_COMPATIBLE:
            raise ValueError(
                f"per_head_norm cannot be combined with normalize_activations="
                f"{cfg.sae.normalize_activations!r}; use one of {PER_HEAD_NORM_COMPATIBLE}"
            )
        if cfg.compile_llm:
            raise ValueError(
                "compile_llm compiles the model's run_with_cache, which the hook_z source does "
                "not call (it stops the forward pass at hook_z itself); set compile_llm=False"
            )
        disable_datasets_torchvision_formatting()
        super().__init__(
            cfg,
            override_dataset=override_dataset,
            override_model=source.model,
            override_sae=override_sae,
        )
        self.source = source
        self.activations_store = HookZActivationsStore.from_source(source, cfg, override_dataset)
        self.evaluator = HookZEvaluator(
            model=self.model,
            activations_store=self.activations_store,
            eval_batch_size_prompts=cfg.eval_batch_size_prompts,
            n_eval_batches=cfg.n_eval_batches,
            model_kwargs=cfg.model_kwargs,
            source=source,
        )
        self._load_source_state()
        if source.per_head_norm and source.per_head_scale is None:
            self.activations_store.estimate_per_head_scale(n_batches_for_head_norm)

    def _load_source_state(self) -> None:
        """Check an activation cache's layout; take a checkpoint's per-head scale."""
        if self.cfg.use_cached_activations:
            cache = Path(str(self.cfg.cached_activations_path))
            if (cache / STATE_FILENAME).exists():
                self.source.load_state(cache)
            elif not self.source.layout.uses_all_heads:
                raise ValueError(
                    f"{cache} has no {STATE_FILENAME}, so it holds all heads of "
                    f"{self.source.hook_name} (SAELens's own cache); this source reads heads "
                    f"{list(self.source.layout.heads)}"
                )
        if self.cfg.resume_from_checkpoint is not None:
            self.source.load_state(self.cfg.resume_from_checkpoint)

    @override
    def run_trainer_with_interruption_handling(self, trainer: Any) -> TrainingSAE[Any]:
        progress_every_step(trainer)
        sae = super().run_trainer_with_interruption_handling(trainer)
        finish_hook_z_sae(sae, self.source)
        return sae

    @override
    def save_checkpoint(self, checkpoint_path: Path | None) -> None:
        super().save_checkpoint(checkpoint_path)
        if checkpoint_path is not None:
            self.source.save_state(checkpoint_path)


def finish_hook_z_sae(sae: TrainingSAE[Any], source: HookZSource) -> None:
    """Make a freshly trained SAE take raw hook_z and know its heads (in place): fold the
    per-head scale, store the layout, and ask for hook_z reshaping when it reads all
    heads (so `HookedSAETransformer` can splice it in at `blocks.L.attn.hook_z`).

    A ValueError if training left NaN or inf in the weights: such an SAE is never saved."""
    check_finite_weights(sae)
    scale = source.input_scale
    if scale is not None:
        fold_input_scale(sae, scale)
        sae.cfg.metadata["per_head_scale_folded"] = source.per_head_scale.tolist()
    source.layout.store_in(sae)
    sae.cfg.reshape_activations = "hook_z" if source.layout.uses_all_heads else "none"


def check_finite_weights(sae: TrainingSAE[Any]) -> None:
    """ValueError naming the parameters of `sae` that hold NaN or inf."""
    bad = [name for name, parameter in sae.named_parameters() if not torch.isfinite(parameter).all()]
    if bad:
        raise ValueError(
            f"training diverged: {', '.join(bad)} hold NaN or inf, so the SAE was not saved; "
            "train again with a lower learning rate or sparsity coefficient"
        )
