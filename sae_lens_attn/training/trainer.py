"""`HookZSAETrainer`: SAELens's `SAETrainer` with exact checkpoints, safe interrupts and
the parallel mode's per-step synchronisation. Its `fit` loop is SAELens's own.

What it changes, all at step boundaries (the top of `fit`'s loop, where the SAE, the
optimizer, the schedulers and the counters describe the same completed step):
- `--checkpoint-every N`: a checkpoint every N steps (`step_N/`, see `checkpoints.py`);
- a SIGINT/SIGTERM only sets a flag; at the next boundary all ranks agree on it, save a
  checkpoint and stop with `TrainingInterrupted` (SAELens raises in the middle of a step
  and saves whatever state that step left);
- every `save_checkpoint` (SAELens's `n_checkpoints` too) gathers the ranks' files and
  rank 0 writes them into a temporary folder renamed into place;
- after each `step`, the `Parallelism` combines what the ranks measured, then a NaN or
  inf loss or weight stops training with `TrainingDiverged` (naming the step, the
  tensors, the last finite loss and the last checkpoint) before anything is saved.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import TrainingSAE, TrainStepInput, TrainStepOutput
from sae_lens.training._interruption import InterruptedException
from sae_lens.training.sae_trainer import SAETrainer
from typing_extensions import override

from sae_lens_attn._atomic import atomic_directory
from sae_lens_attn.errors import PlainRuntimeError
from sae_lens_attn.training.checkpoints import (
    Manifest,
    capture_data_state,
    trainer_folder,
    write_data_state,
)
from sae_lens_attn.training.firing_counts import token_firing_counts
from sae_lens_attn.training.parallel.base import Parallelism
from sae_lens_attn.training.resampling import (
    DeadResampling,
    resample_dead_features,
    unsupported_reason,
)
from sae_lens_attn.training.silent_bias import lift_silent_biases, lift_unsupported_reason

_REPEAT_SIGNAL_GRACE_S = 2.0  # torchrun forwards the terminal's Ctrl-C: count it once


class TrainingInterrupted(InterruptedException):
    """Training stopped on a signal after saving `checkpoint` (None: nowhere to save)."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        self.step, self.checkpoint = step, checkpoint
        where = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint folder set, nothing saved"
        super().__init__(f"interrupted after step {step}: {where}")


class TrainingDiverged(PlainRuntimeError):
    """Training produced a NaN or inf loss or weight in step `step` (1-based); nothing of
    that step was saved. The message names the step, the non-finite loss terms, gradients
    and weights, the last finite loss and the last checkpoint (which holds finite weights)."""

    def __init__(self, trainer: DivergenceCheckedTrainer, output: TrainStepOutput) -> None:
        from sae_lens_attn.sources.weight_check import inspect_weights

        sae, checkpoint, last = trainer.sae, trainer.last_checkpoint, trainer._last_finite_loss
        self.step, self.loss = trainer.n_training_steps + 1, float(output.loss.detach())
        self.report, self.checkpoint = inspect_weights(sae.state_dict(), sae.cfg.d_sae), checkpoint
        terms = [name for name, value in output.losses.items() if not torch.isfinite(torch.as_tensor(value)).all()]
        grads = [name for name, p in sae.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        parts = [f"loss {self.loss:.6g}" + (f" ({', '.join(terms)} not finite)" if terms else "")]
        if grads:
            parts.append(f"gradients of {', '.join(grads)} hold NaN or inf")
        parts.append(self.report.describe_nonfinite() if self.report.damaged else "the weights are still finite")
        parts.append(f"last finite loss {last[1]:.6g} in step {last[0]}" if last else "no step had a finite loss")
        parts.append(f"the last good checkpoint is {checkpoint} (resume from it with a lower --lr)" if checkpoint
                     else f"no checkpoint was saved before it{trainer.checkpoint_hint}")
        super().__init__(
            f"{trainer.sae_label}training diverged in step {self.step}: {'; '.join(parts)}; {trainer.not_saved}: "
            "train again with a lower learning rate or sparsity coefficient"
        )


class DivergenceCheckedTrainer(SAETrainer[Any, Any]):
    """SAELens's `SAETrainer` that checks the loss and every weight after each `step` and
    raises `TrainingDiverged` at the first NaN or inf, before anything saves that step's
    state. `watch` turns a trainer SAELens built into one, in place."""

    sae_label = ""  # "SAE 'name': " where a run trains several
    not_saved = "the SAE was not saved"
    checkpoint_hint = ""
    last_checkpoint: Path | None = None
    _last_finite_loss: tuple[int, float] | None = None  # (step, loss) of the last finite step
    resampling: DeadResampling | None = None  # dead-feature resampling (`resampling.py`)
    resampled: list[tuple[int, int]]  # (step, features moved) of each resampling
    silent_bias_lift: bool = False  # the silent-feature bias lift (`silent_bias.py`)
    lifted: int  # features lifted, summed over steps
    revival_skipped: dict[str, str]  # metadata key -> why this SAE cannot do what was asked

    def revive_dead(self, resample_every_tokens: int | None, silent_bias_lift: bool) -> None:
        """Resample dead features every `resample_every_tokens` training tokens (rounded up
        to whole steps; None: never) until 80% of the run (`DeadResampling.for_run`), and
        with `silent_bias_lift` lift the bias of every feature silent on a step's batch to
        the edge of firing (`silent_bias.py`). What an SAE cannot do (resampling without a
        trainable encoder and `b_enc`, the lift on anything but a per-head TopK SAE) it skips."""
        self.resampled, self.lifted, self.revival_skipped = [], 0, {}
        self.resampling, self.silent_bias_lift = None, False
        if resample_every_tokens is not None:
            if (reason := unsupported_reason(self.sae)) is not None:
                self.revival_skipped["resampling"] = reason
            else:
                self.resampling = DeadResampling.for_run(
                    resample_every_tokens, self.cfg.train_batch_size_samples, self.cfg.total_training_samples
                )
        if silent_bias_lift:
            if (reason := lift_unsupported_reason(self.sae)) is not None:
                self.revival_skipped["silent_bias_lift"] = reason
            else:
                self.silent_bias_lift = True

    def record_revival(self, sae: TrainingSAE[Any]) -> None:
        """Write what resampling and the bias lift did into `sae.cfg.metadata["resampling"]`
        and `["silent_bias_lift"]` (the finished SAE of this trainer): `{"skipped": why}`
        where the SAE could not, nothing for what was not asked for."""
        for key, reason in self.revival_skipped.items():
            sae.cfg.metadata[key] = {"skipped": reason}
        if self.resampling is not None:
            resampled = [list(pair) for pair in self.resampled]
            sae.cfg.metadata["resampling"] = {**asdict(self.resampling), "resampled": resampled}
        if self.silent_bias_lift:
            sae.cfg.metadata["silent_bias_lift"] = {"lifted": self.lifted}

    @classmethod
    def watch(cls, trainer: SAETrainer[Any, Any], label: str = "", not_saved: str | None = None) -> SAETrainer[Any, Any]:
        trainer.__class__ = cls
        trainer.sae_label = label
        if not_saved is not None:
            trainer.not_saved = not_saved
        return trainer

    @override
    def _train_step(self, sae: TrainingSAE[Any], sae_in: torch.Tensor) -> TrainStepOutput:
        """SAELens's `_train_step` (sae_lens 6.54), with the firing statistics counted by
        `token_firing_counts` instead of `feature_acts.bool().float()` and two sums: the
        same counts, without a float copy of the batch or torch's sparse sums. Everything
        else is SAELens's, in SAELens's order (`tests/test_firing_counts.py` checks the
        weights and counters against `SAETrainer._train_step` step by step)."""
        sae.train()
        with self.autocast_if_enabled:
            output = self.sae.training_forward_pass(
                step_input=TrainStepInput(
                    sae_in=sae_in,
                    dead_neuron_mask=self.dead_neurons,
                    coefficients=self.get_coefficients(),
                    n_training_steps=self.n_training_steps,
                    is_logging_step=self._is_logging_step(),
                ),
            )
            with torch.no_grad():
                self._count_firings(output.feature_acts)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.lr_scheduler.step()
        for scheduler in self.coefficient_schedulers.values():
            scheduler.step()
        return output

    def _count_firings(self, feature_acts: torch.Tensor) -> None:
        """SAELens's firing bookkeeping for one batch of `feature_acts [tokens, d_sae]`."""
        counts = token_firing_counts(feature_acts)
        if counts is None:  # not [tokens, d_sae]: SAELens's own lines
            firing = feature_acts.bool().float()
            did_fire = firing.sum(-2).bool()
            counts = firing.sum(0)
            did_fire = did_fire.to_dense() if did_fire.is_sparse else did_fire
        else:
            did_fire = counts > 0
        self.n_forward_passes_since_fired += 1
        self.n_forward_passes_since_fired[did_fire] = 0
        self.act_freq_scores += counts
        self.n_frac_active_samples += self.cfg.train_batch_size_samples

    @override
    def step(self, batch: torch.Tensor) -> TrainStepOutput:
        output = super().step(batch)
        loss = output.loss.detach()
        finite = [torch.isfinite(loss).all(), *(torch.isfinite(p.detach()).all() for p in self.sae.parameters())]
        if not bool(torch.stack(finite).all()):
            raise TrainingDiverged(self, output)
        step = self.n_training_steps + 1
        self._last_finite_loss = (step, float(loss))
        resampling_due = self.resampling is not None and self.resampling.due(step)
        if not resampling_due and not self.silent_bias_lift:
            return output
        sae_in = self.activation_scaler(batch.to(self.sae.device))
        if resampling_due:
            dead = self.dead_neurons
            moved = resample_dead_features(
                self.sae, self.optimizer, dead, sae_in, torch.Generator(device=self.sae.device).manual_seed(step)
            )
            self.n_forward_passes_since_fired[dead] = 0  # each gets a whole window to fire
            self.resampled.append((step, moved))
        if self.silent_bias_lift:
            silent = self.n_forward_passes_since_fired > 0  # did not fire on this batch
            self.lifted += lift_silent_biases(self.sae, silent, sae_in, output.feature_acts)
        return output


class HookZSAETrainer(DivergenceCheckedTrainer):
    """See the module docstring. Made from the trainer SAELens's runner built, by
    `adopt` (the runner constructs `SAETrainer` by name inside `run`)."""

    parallel: Parallelism
    checkpoint_every: int | None
    _last_checkpoint_step: int
    _scaler_agreed: bool
    checkpoint_hint = " (--checkpoint-every N keeps one)"

    @classmethod
    def adopt(
        cls,
        trainer: SAETrainer[Any, Any],
        parallel: Parallelism,
        checkpoint_every: int | None,
    ) -> HookZSAETrainer:
        """Turn SAELens's freshly built (or resumed) trainer into this class, in place."""
        trainer.__class__ = cls
        assert isinstance(trainer, cls)
        trainer.parallel = parallel
        trainer.checkpoint_every = checkpoint_every
        trainer._last_checkpoint_step = trainer.n_training_steps
        trainer.last_checkpoint = None
        trainer._scaler_agreed = False
        return trainer

    @override
    def step(self, batch: torch.Tensor) -> TrainStepOutput:
        act_freq_before = self.act_freq_scores.clone()
        output = super().step(batch)  # stops here if this step diverged
        self.parallel.after_step(self, act_freq_before)
        return output

    @override
    def maybe_reset_sparsity(self) -> dict[str, Any]:
        # The first call of each iteration of `fit`'s loop: a step boundary.
        if not self._scaler_agreed:  # `fit` estimated SAELens's input scaling just before
            self.parallel.agree_on_activation_scaler(self)
            self._scaler_agreed = True
        if self.parallel.stop_agreed:
            checkpoint = self._checkpoint_now() if self.cfg.checkpoint_path else None
            raise TrainingInterrupted(self.n_training_steps, checkpoint)
        every = self.checkpoint_every
        if every and self.n_training_steps % every == 0 and self.n_training_steps != self._last_checkpoint_step:
            self._checkpoint_now()
        return super().maybe_reset_sparsity()

    def _checkpoint_now(self) -> Path | None:
        self.save_checkpoint(f"step_{self.n_training_steps}")
        self._last_checkpoint_step = self.n_training_steps
        return self.last_checkpoint

    @override
    def save_checkpoint(
        self,
        checkpoint_name: str,
        base_path: Path | str | None = None,
        wandb_aliases: list[str] | None = None,
    ) -> None:
        """Every rank sends its files; rank 0 writes `base/checkpoint_name` atomically."""
        base = base_path if base_path is not None else self.cfg.checkpoint_path
        if base is None:
            return super().save_checkpoint(checkpoint_name, base_path, wandb_aliases)
        parallel = self.parallel
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            if parallel.is_main or parallel.mode == "heads":  # data mode: rank 0's SAE = all
                super().save_checkpoint("trainer", folder, wandb_aliases)
            store = self.data_provider
            parts = (
                _read_files(folder / "trainer"),
                write_data_state(store, capture_data_state(store), folder, parallel.rank),  # type: ignore[arg-type]
            )
        gathered = parallel.gather_to_main(parts)
        target = Path(base) / checkpoint_name
        if gathered is not None:
            with atomic_directory(target) as tmp:
                for rank, (trainer_files, data_files) in enumerate(gathered):
                    _write_files(trainer_folder(tmp, parallel.mode, rank), trainer_files)
                    _write_files(tmp, data_files)
                Manifest(parallel.mode, parallel.world_size, self.n_training_steps, self.n_training_samples).write(tmp)
        self.last_checkpoint = target


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _read_files(folder: Path) -> dict[str, bytes]:
    """`{relative path: bytes}` of every file under `folder` (none if it does not exist)."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def deferred_interrupts(parallel: Parallelism) -> Iterator[None]:
    """SIGINT/SIGTERM ask `parallel` to stop at the next step boundary; a second signal
    (more than 2 s later) aborts at once with KeyboardInterrupt, saving nothing."""
    first: list[float] = []

    def handle(signum: int, frame: Any) -> None:
        now = time.monotonic()
        if first and now - first[0] > _REPEAT_SIGNAL_GRACE_S:
            raise KeyboardInterrupt
        if not first:
            first.append(now)
            print(
                f"\n{signal.Signals(signum).name} received: finishing this step and saving a "
                "checkpoint (signal again to abort without saving)",
                file=sys.stderr, flush=True,
            )
            parallel.request_stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
