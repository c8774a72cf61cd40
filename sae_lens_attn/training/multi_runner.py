"""`HookZMultiSAETrainingRunner`: SAELens's `MultiSAETrainingRunner` fed by `HookZSource`s.

Many SAEs, one forward pass per batch. SAELens's multi-SAE runner already gives every SAE
its own `SAETrainer` (optimizer, schedules, activation scaler, sparsity tracking), evals
and checkpoint folder; this subclass changes what the single-SAE `HookZTrainingRunner`
changes, per SAE:
- its store is a `MultiHookZActivationsStore` (one stream per distinct source, the
  forward pass stopped after the deepest layer's hook_z), and each normalising source's
  per-head scale is estimated before training, as a single run estimates it;
- the evaluator scales raw hook_z like each SAE's training batches and skips SAEs on
  head subsets (SAELens's evals splice into all heads);
- each SAE's trainer stops the run at its first NaN or inf loss or weight, naming the SAE
  and the step (`DivergenceCheckedTrainer`);
- after `MultiSAETrainer.fit`, every SAE is finished like a single run's
  (`finish_hook_z_sae`: finite weights, folded scale, head layout, hook_z reshaping);
- each SAE is saved to its own folder (staged, then published whole) and `saes.json`
  lists them; checkpoints hold each SAE's source state.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens.config import HfDataset
from sae_lens.constants import RUNNER_CFG_FILENAME
from sae_lens.multi_sae_training_runner import (
    MultiSAEEvaluator,
    MultiSAETrainingRunner,
    MultiSAETrainingRunnerConfig,
)
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.multi_sae_trainer import MultiSAETrainer
from sae_lens.training.types import MultiHookDataProvider
from typing_extensions import override

from sae_lens_attn._atomic import atomic_write_text
from sae_lens_attn._upstream import disable_datasets_torchvision_formatting, progress_every_step
from sae_lens_attn.architectures.init_options import SAEInit
from sae_lens_attn.sources.hook_z import HookZSource
from sae_lens_attn.sources.multi_store import MultiHookZActivationsStore, stream_key
from sae_lens_attn.training.evaluation import subset_message, with_input_scale
from sae_lens_attn.training.initialisation import draw_multi_sample, initialise_training_sae
from sae_lens_attn.training.outputs import (
    publish_sae_folder,
    sae_list_entry,
    staging_folder,
    training_metrics,
    write_sae_list,
)
from sae_lens_attn.training.runner import PER_HEAD_NORM_COMPATIBLE, finish_hook_z_sae
from sae_lens_attn.training.timing import record_training_time, timed_steps
from sae_lens_attn.training.trainer import DivergenceCheckedTrainer


@dataclass
class HookZMultiSAEEvaluator(MultiSAEEvaluator):
    """SAELens's per-SAE evaluator, aware of each SAE's source (see `HookZEvaluator`)."""

    sources: dict[str, HookZSource] = field(default_factory=dict)

    @override
    def __call__(
        self,
        saes: dict[str, TrainingSAE[Any]],
        data_provider: MultiHookDataProvider,
        activation_scalers: dict[str, ActivationScaler],
        hook_names: dict[str, str],
    ) -> dict[str, Any]:
        for name in saes:
            if not self.sources[name].layout.uses_all_heads:
                warnings.warn(f"{name}: {subset_message(self.sources[name].layout)}; skipping them", stacklevel=2)
        evaluated = {name: sae for name, sae in saes.items() if self.sources[name].layout.uses_all_heads}
        scalers = {
            name: with_input_scale(activation_scalers[name], self.sources[name].input_scale)
            for name in evaluated
        }
        return super().__call__(evaluated, data_provider, scalers, hook_names)


class HookZMultiSAETrainingRunner(MultiSAETrainingRunner):
    """Train several SAEs on `HookZSource`s from one forward pass per batch.

    `sources` maps each SAE name of `cfg.saes` to its source; `cfg.hook_names` must map
    each name to `stream_key(source)` and `cfg.saes[name].d_in` must be `source.d_in`
    (`multi_runner_config` builds such a config). Sources with the same stream key are
    one stream: its first source object serves them all. `folders` maps SAE names to
    their folders under `cfg.output_path` (default: the name). `inits` maps SAE names to
    a data-driven initialisation (`SAEInit`), applied before training from the first
    batches of training inputs (not when resuming).
    """

    sources: dict[str, HookZSource]
    activations_store: MultiHookZActivationsStore

    def __init__(
        self,
        cfg: MultiSAETrainingRunnerConfig,
        sources: Mapping[str, HookZSource],
        override_dataset: HfDataset | None = None,
        override_saes: dict[str, TrainingSAE[Any]] | None = None,
        folders: Mapping[str, str] | None = None,
        n_batches_for_head_norm: int = 8,
        inits: Mapping[str, SAEInit] | None = None,
        resample_every_tokens: int | None = None,
        silent_bias_lift: bool = False,
    ) -> None:
        check_config_matches_sources(cfg, sources)
        self.revival = (resample_every_tokens, silent_bias_lift)
        if cfg.compile_llm:
            raise ValueError(
                "compile_llm compiles the model's run_with_cache, which the hook_z sources do "
                "not call (they stop the forward pass at hook_z themselves); set compile_llm=False"
            )
        models = {id(source.model) for source in sources.values()}
        if len(models) != 1:
            raise ValueError("all sources of a multi-SAE run must read the same model object")
        disable_datasets_torchvision_formatting()
        streams: dict[str, HookZSource] = {}
        for source in sources.values():
            streams.setdefault(stream_key(source), source)
        self.sources = {name: streams[stream_key(source)] for name, source in sources.items()}
        self.folders = {name: (folders or {}).get(name, name) for name in cfg.saes}
        super().__init__(
            cfg,
            override_dataset=override_dataset,
            override_model=next(iter(sources.values())).model,
            override_saes=override_saes,
        )
        self.activations_store = MultiHookZActivationsStore.adopt(self.activations_store, streams)
        self.evaluator = HookZMultiSAEEvaluator(
            model=self.model,
            activations_store=self.activations_store,
            eval_batch_size_prompts=cfg.eval_batch_size_prompts,
            n_eval_batches=cfg.n_eval_batches,
            model_kwargs=cfg.model_kwargs,
            user_evaluator=cfg.evaluator,
            sources=self.sources,
        )
        if cfg.resume_from_checkpoint is not None:
            for name, source in self.sources.items():
                source.load_state(Path(cfg.resume_from_checkpoint) / name)
        self.activations_store.estimate_per_head_scales(n_batches_for_head_norm)
        if cfg.resume_from_checkpoint is None:
            self._initialise(inits or {})

    def _initialise(self, inits: Mapping[str, SAEInit]) -> None:
        """Initialise the SAEs that ask for it from the same first batches (as many as
        the largest `n_batches` asked for; each SAE takes its own stream's inputs)."""
        wanted = {name: init for name, init in inits.items() if init.needs_data}
        if not wanted:
            return
        samples = draw_multi_sample(self.activations_store, max(init.n_batches for init in wanted.values()))
        for name, init in wanted.items():
            initialise_training_sae(self.saes[name], samples[stream_key(self.sources[name])], init)

    @override
    def _set_sae_metadata(self) -> None:
        super()._set_sae_metadata()
        for name, sae in self.saes.items():
            self.sources[name].layout.store_in(sae)  # the real hook name, not the stream key

    @override
    def _run_with_interruption_handling(self, trainer: MultiSAETrainer) -> dict[str, TrainingSAE[Any]]:
        progress_every_step(trainer)
        for name, sae_trainer in trainer.trainers.items():  # stop at the first NaN/inf, naming the SAE
            DivergenceCheckedTrainer.watch(sae_trainer, f"SAE {name!r}: ", "no SAE of this run was saved")
            sae_trainer.revive_dead(*self.revival)
        began = time.perf_counter()
        with timed_steps(trainer.trainers) as step_seconds:
            saes = super()._run_with_interruption_handling(trainer)
        total_seconds = time.perf_counter() - began
        for name, sae in saes.items():
            try:
                finish_hook_z_sae(sae, self.sources[name])
            except ValueError as error:
                raise ValueError(f"SAE {name!r}: {error}; no SAE of this run was saved") from None
        record_training_time(saes, step_seconds, total_seconds, trainer.n_training_samples)
        for name, sae in saes.items():
            trainer.trainers[name].record_revival(sae)
        return saes

    @override
    def _save_runner_checkpoint_files(self, checkpoint_path: Path | None) -> None:
        super()._save_runner_checkpoint_files(checkpoint_path)
        if checkpoint_path is not None:
            for name, source in self.sources.items():
                source.save_state(checkpoint_path / name)

    @override
    def _save_final_outputs(self, saes: dict[str, TrainingSAE[Any]], trainer: MultiSAETrainer) -> None:
        """Upstream's saving into a staging folder, then each SAE published into its folder,
        the runner config beside them and `saes.json` last."""
        assert self.cfg.output_path is not None
        out = Path(self.cfg.output_path)
        with staging_folder(out) as staged:
            self.cfg.output_path = str(staged)
            try:
                super()._save_final_outputs(saes, trainer)
            finally:
                self.cfg.output_path = str(out)
            for name in saes:
                publish_sae_folder(staged / name, out / self.folders[name])
        atomic_write_text(out / RUNNER_CFG_FILENAME, json.dumps(self.cfg.to_dict()))
        write_sae_list(out, [self.sae_list_entry(name, sae) for name, sae in saes.items()])

    def sae_list_entry(self, name: str, sae: TrainingSAE[Any]) -> dict[str, Any]:
        """The `saes.json` entry of SAE `name`, with its `training_metrics`."""
        layout = self.sources[name].layout
        return sae_list_entry(
            name, layout.layer, layout.heads, sae.cfg.architecture(), self.folders[name],
            training_metrics(sae),
        )


def check_config_matches_sources(cfg: MultiSAETrainingRunnerConfig, sources: Mapping[str, HookZSource]) -> None:
    """ValueError unless every SAE of `cfg` has a source and trains on what it produces."""
    if set(sources) != set(cfg.saes):
        raise ValueError(
            f"sources must name exactly the SAEs of the config: {sorted(cfg.saes)}, got {sorted(sources)}"
        )
    for name, source in sources.items():
        sae_cfg = cfg.saes[name]
        if cfg.hook_names_per_sae[name] != stream_key(source):
            raise ValueError(
                f"SAE {name!r}: hook name {cfg.hook_names_per_sae[name]!r} does not match its "
                f"source; set it to {stream_key(source)!r}"
            )
        if sae_cfg.d_in != source.d_in:
            raise ValueError(
                f"SAE {name!r}: d_in={sae_cfg.d_in} does not match its source's {source.d_in} "
                f"(heads {list(source.layout.heads)} x d_head {source.layout.d_head})"
            )
        if cfg.hook_head_indices_per_sae[name] is not None:
            raise ValueError(f"SAE {name!r}: hook_head_indices cannot be combined with a HookZSource; "
                             "give the source heads instead")
        if source.per_head_norm and sae_cfg.normalize_activations not in PER_HEAD_NORM_COMPATIBLE:
            raise ValueError(
                f"SAE {name!r}: per_head_norm cannot be combined with normalize_activations="
                f"{sae_cfg.normalize_activations!r}; use one of {PER_HEAD_NORM_COMPATIBLE}"
            )


def multi_runner_config(sources: Mapping[str, HookZSource], saes: Mapping[str, Any], **fields: Any) -> MultiSAETrainingRunnerConfig:
    """A `MultiSAETrainingRunnerConfig` for SAEs `saes` (name -> training config) on
    `sources` (name -> source): hook names are the sources' stream keys; `fields` are
    the config's other fields."""
    return MultiSAETrainingRunnerConfig(
        saes=dict(saes),
        hook_names={name: stream_key(source) for name, source in sources.items()},
        **fields,
    )


def seeded_training_sae(sae_cfg: Any, seed: int) -> TrainingSAE[Any]:
    """A fresh `TrainingSAE` of `sae_cfg`, initialised right after `torch.manual_seed(seed)`,
    as SAELens's single-SAE runner builds it (so a multi run's SAEs start where separate
    runs with the same seed start)."""
    torch.manual_seed(seed)
    return TrainingSAE.from_dict(sae_cfg.to_dict())
