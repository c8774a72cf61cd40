"""How one SAE training run is spread over torchrun's processes: `--parallel data|heads`.

`Parallelism` is the one-process default and does nothing; `DataParallel` (`data.py`)
and `HeadParallel` (`heads.py`) override its hooks, and `modes.parallel_training` picks
one. The `HookZTrainingRunner` calls them at construction (`narrow`, `prepare_store`, the
per-head scale), on the SAE's gradients (`install`) and at the end (`assemble`); the
`HookZSAETrainer` after each step (`after_step`) and before the first
(`agree_on_activation_scaler`). Nothing here is a second training loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from sae_lens import SAE, LanguageModelSAERunnerConfig, TrainingSAE

from sae_lens_attn.sources.hook_z import HookZSource
from sae_lens_attn.training.parallel.distributed import (
    Communicator,
)

if TYPE_CHECKING:
    from sae_lens.training.sae_trainer import SAETrainer

    from sae_lens_attn.sources.store import HookZActivationsStore

PARALLEL_MODES = ("data", "heads")
SINGLE = "none"


class Parallelism:
    """One process: every hook is a no-op. Base class of the distributed modes."""

    mode = SINGLE
    comm: Communicator | None = None

    def __init__(self) -> None:
        self.stop_agreed = False  # a stop request every rank has seen (set after a step)
        self._stop_local = False
        self._hooks: list[Any] = []

    @property
    def rank(self) -> int:
        return 0 if self.comm is None else self.comm.rank

    @property
    def world_size(self) -> int:
        return 1 if self.comm is None else self.comm.world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def load_saved_sae(self, folder: str | Path, device: str) -> SAE[Any]:
        """The SAE rank 0 saved in `folder`, on every rank (rank 0 sends its config and
        weights, so the other ranks need not see rank 0's disk)."""
        if self.comm is None:
            return SAE.load_from_disk(folder, device=device)
        sae = SAE.load_from_disk(folder, device=device) if self.is_main else None
        cfg, state = self.comm.broadcast_from_main(
            (sae.cfg.to_dict(), {k: v.cpu() for k, v in sae.state_dict().items()}) if sae else None
        )
        if sae is None:
            sae = SAE.from_dict({**cfg, "device": device})
            sae.load_state_dict(state)
        return sae

    def metadata(self) -> dict[str, Any]:
        """What saved SAEs record in `cfg.metadata`."""
        return {"world_size": self.world_size, "parallel": self.mode}

    def request_stop(self) -> None:
        """This rank was asked to stop (a signal); all ranks agree on it after a step."""
        self._stop_local = True
        if self.comm is None:
            self.stop_agreed = True

    def narrow(
        self,
        cfg: LanguageModelSAERunnerConfig[Any],
        source: HookZSource,
        override_sae: TrainingSAE[Any] | None,
    ) -> tuple[LanguageModelSAERunnerConfig[Any], HookZSource, TrainingSAE[Any] | None]:
        """The config, source and SAE this rank trains (the whole run by default)."""
        return cfg, source, override_sae

    def prepare_store(self, store: HookZActivationsStore) -> None:
        """Restrict the store to this rank's data (before anything is read from it)."""

    def agree_on_per_head_scale(self, source: HookZSource) -> None:
        """Make the per-head input scale the same on every rank."""

    def agree_on_activation_scaler(self, trainer: SAETrainer[Any, Any]) -> None:
        """Before the first step: make SAELens's estimated input scaling the same on every rank."""

    def install(self, sae: TrainingSAE[Any]) -> None:
        """Gradient hooks on the SAE this rank trains (removed by `uninstall`)."""

    def uninstall(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def after_step(self, trainer: SAETrainer[Any, Any], act_freq_before: torch.Tensor) -> None:
        """Called on every rank right after SAELens's `step`: combine per-rank statistics."""

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` on rank 0 (in rank order), None elsewhere."""
        return [obj] if self.comm is None else self.comm.gather_to_main(obj)

    def assemble(
        self, sae: TrainingSAE[Any], trainer: SAETrainer[Any, Any], source: HookZSource
    ) -> tuple[TrainingSAE[Any] | None, torch.Tensor | None]:
        """The finished SAE and its log10 feature sparsity on rank 0 (None elsewhere)."""
        return sae, trainer.log_feature_sparsity
