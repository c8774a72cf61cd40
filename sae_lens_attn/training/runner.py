"""`HookZTrainingRunner`: SAELens's `LanguageModelSAETrainingRunner` fed by a `HookZSource`.

SAELens's runner has no notion of an activation source, so this subclass changes a few
seams and keeps everything else (the `SAETrainer.fit` loop, evals, W&B, saving):
- after construction, its `activations_store` (and the evaluator's) is a
  `HookZActivationsStore` reading the source (the seam upstream-notes lists as verified);
- `run_trainer_with_interruption_handling`, which wraps `SAETrainer.fit`, turns the
  trainer SAELens built into a `HookZSAETrainer` (exact step-boundary checkpoints every
  `checkpoint_every` steps, `resume_from` such a checkpoint, SIGINT/SIGTERM saving one),
  and finishes the SAE right after fit and before the runner saves it: the per-head scale
  is folded in, the `HeadLayout` is stored in the metadata and
  `reshape_activations="hook_z"` is set;
- `save_checkpoint` also writes the source's state (layout, per-head scale);
- `save_final_sae` writes through a temporary folder renamed into place.

With `parallel` (a `Parallelism` from `parallel.py`, under torchrun) it trains this
rank's share of the run, and only rank 0 writes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, TrainingSAE
from sae_lens.config import HfDataset
from typing_extensions import override

from sae_lens_attn._atomic import atomic_directory
from sae_lens_attn._upstream import disable_datasets_torchvision_formatting, progress_every_step
from sae_lens_attn.architectures.init_options import SAEInit
from sae_lens_attn.sources.hook_z import STATE_FILENAME, HookZSource
from sae_lens_attn.sources.store import HookZActivationsStore, check_config_matches_source
from sae_lens_attn.training.checkpoints import (
    Manifest,
    ResumableBatches,
    restore_data_state,
    trainer_folder,
)
from sae_lens_attn.training.evaluation import HookZEvaluator
from sae_lens_attn.training.folding import fold_input_scale
from sae_lens_attn.training.initialisation import draw_sample, initialise_training_sae
from sae_lens_attn.training.parallel.base import Parallelism
from sae_lens_attn.training.timing import record_training_time
from sae_lens_attn.training.trainer import HookZSAETrainer, deferred_interrupts

# SAELens normalisations that commute with a per-head diagonal scale and are folded
# before it; the others normalise inside the SAE or mix heads.
PER_HEAD_NORM_COMPATIBLE = ("none", "expected_average_only_in")


class HookZTrainingRunner(LanguageModelSAETrainingRunner):
    """Train an SAE on a `HookZSource` with SAELens's own runner.

    `cfg` is an ordinary `LanguageModelSAERunnerConfig` with `hook_name` equal to the
    source's and `sae.d_in` equal to `source.d_in`; the model is the source's. With
    `per_head_norm`, the scale is estimated from `n_batches_for_head_norm` LLM batches
    (or read from the checkpoint or activation cache) before training.

    `parallel`: this rank's part in a torchrun job (default: one process).
    `checkpoint_every`: a checkpoint every N steps under `cfg.checkpoint_path`.
    `resume_from`: a `step_N` checkpoint folder written by this class, resumed exactly
    (same world size and parallel mode).
    `init`: initialise the SAE from the first `init.n_batches` batches of training inputs
    (`SAEInit`: b_dec from data, decoder in the active subspace) before training; not
    when resuming.
    """

    source: HookZSource
    full_source: HookZSource

    def __init__(
        self,
        cfg: LanguageModelSAERunnerConfig[Any],
        source: HookZSource,
        override_dataset: HfDataset | None = None,
        override_sae: TrainingSAE[Any] | None = None,
        n_batches_for_head_norm: int = 8,
        *,
        parallel: Parallelism | None = None,
        checkpoint_every: int | None = None,
        resume_from: str | Path | None = None,
        init: SAEInit | None = None,
        resample_every_tokens: int | None = None,
        silent_bias_lift: bool = False,
    ) -> None:
        check_config_matches_source(cfg, source)
        if (resample_every_tokens is not None or silent_bias_lift) and parallel is not None and parallel.world_size > 1:
            raise ValueError(
                "dead-feature resampling and the silent-feature bias lift run on one process: "
                "each rank would move its features by its own batch; turn them off under torchrun"
            )
        self.revival = (resample_every_tokens, silent_bias_lift)
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
        self.parallel = parallel or Parallelism()
        self.checkpoint_every = checkpoint_every
        self.resume_from = self._check_resume(resume_from, cfg)
        self.full_source, self.full_cfg = source, cfg
        cfg, source, override_sae = self.parallel.narrow(cfg, source, override_sae)
        if not self.parallel.is_main:
            cfg.logger.log_to_wandb = False  # only rank 0 logs
        disable_datasets_torchvision_formatting()
        super().__init__(
            cfg,
            override_dataset=override_dataset,
            override_model=source.model,
            override_sae=override_sae,
        )
        self.source = source
        self.activations_store = HookZActivationsStore.from_source(source, cfg, override_dataset)
        self.parallel.prepare_store(self.activations_store)
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
            self.parallel.agree_on_per_head_scale(source)
        if init is not None and init.needs_data and self._resume_folder is None and cfg.resume_from_checkpoint is None:
            if self.parallel.world_size > 1:
                raise ValueError("data-driven initialisation (b_dec/decoder init) trains one process only; "
                                 "run without torchrun or with SAELens's initialisation")
            initialise_training_sae(self.sae, draw_sample(self.activations_store, init.n_batches), init)

    def _check_resume(self, resume_from: str | Path | None, cfg: LanguageModelSAERunnerConfig[Any]) -> Path | None:
        if self.parallel.comm is not None and cfg.resume_from_checkpoint is not None:
            raise ValueError("under torchrun, resume with resume_from (--resume), not resume_from_checkpoint")
        if cfg.prefetch_llm_batches:
            raise ValueError(
                "prefetch_llm_batches runs the store ahead of training, so checkpoints and "
                "interrupts could not save its exact position; set prefetch_llm_batches=False"
            )
        if self.checkpoint_every and cfg.checkpoint_path is None:
            raise ValueError("checkpoint_every needs cfg.checkpoint_path (where checkpoints go)")
        if resume_from is None:
            return None
        folder = Path(resume_from)
        Manifest.read(folder).check_matches(self.parallel.mode, self.parallel.world_size, folder)
        return folder

    @property
    def _resume_folder(self) -> Path | None:
        """This rank's SAELens checkpoint files in the `resume_from` folder."""
        if self.resume_from is None:
            return None
        return trainer_folder(self.resume_from, self.parallel.mode, self.parallel.rank)

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
        resume = self.cfg.resume_from_checkpoint or self._resume_folder
        if resume is not None:
            self.source.load_state(resume)

    @override
    def run_trainer_with_interruption_handling(self, trainer: Any) -> TrainingSAE[Any] | None:
        """Train (SAELens's `fit`), then finish the SAE: on rank 0 the whole SAE, else None."""
        trainer = HookZSAETrainer.adopt(trainer, self.parallel, self.checkpoint_every)
        trainer.revive_dead(*self.revival)
        progress_every_step(trainer)
        self._resume(trainer)
        self.parallel.install(self.sae)
        began = time.perf_counter()
        try:
            with deferred_interrupts(self.parallel):
                sae = trainer.fit()
        finally:
            self.parallel.uninstall()
        seconds = time.perf_counter() - began
        sae, self._final_log_sparsity = self.parallel.assemble(sae, trainer, self.source)
        self.cfg = self.full_cfg  # the runner config saved with the SAE: the whole run's
        if sae is None:
            return None
        finish_hook_z_sae(sae, self.full_source)
        record_training_time({"sae": sae}, {"sae": 0.0}, seconds, trainer.n_training_samples)
        for key, value in self.parallel.metadata().items():
            sae.cfg.metadata[key] = value
        trainer.record_revival(sae)
        return sae

    def _resume(self, trainer: HookZSAETrainer) -> None:
        """Load a checkpoint into the trainer, the SAE and the store (or start the store's
        resumable batches fresh)."""
        folder = self._resume_folder
        if folder is None:
            self.activations_store._dataloader = ResumableBatches(self.activations_store)
            return
        trainer.load_trainer_state(folder)
        self.sae.load_weights_from_checkpoint(folder)
        assert self.resume_from is not None
        restore_data_state(self.activations_store, self.resume_from, self.parallel.rank)
        trainer._last_checkpoint_step = trainer.n_training_steps
        trainer._scaler_agreed = True  # the checkpoint holds rank 0's agreed scaling

    @override
    def save_checkpoint(self, checkpoint_path: Path | None) -> None:
        super().save_checkpoint(checkpoint_path)
        if checkpoint_path is not None:
            self.source.save_state(checkpoint_path)

    @override
    def save_final_sae(
        self,
        sae: TrainingSAE[Any],
        output_path: str,
        log_feature_sparsity: torch.Tensor | None = None,
    ) -> None:
        """Rank 0 only; the folder appears complete or not at all."""
        if not self.parallel.is_main:
            return
        sparsity = getattr(self, "_final_log_sparsity", None)
        with atomic_directory(output_path) as tmp:
            super().save_final_sae(sae, str(tmp), sparsity if sparsity is not None else log_feature_sparsity)


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
