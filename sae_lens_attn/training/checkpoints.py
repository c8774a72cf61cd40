"""Checkpoints that resume exactly, on one process or under torchrun.

SAELens's checkpoint holds the SAE, the optimizer and schedulers, the sparsity statistics
and the store's dataset position. Two things it leaves out make a resumed run differ from
an uninterrupted one (by about 1e-3 with the default shuffling): the activations waiting
in the store's mixing buffer, and the RNG that shuffles it. `ResumableBatches` wraps
SAELens's own `mixing_buffer` so both can be saved and put back; with them a resumed run
is bit-for-bit the uninterrupted one.

A checkpoint folder `step_N/` holds
- SAELens's checkpoint files of rank 0 (one process, `--parallel data`), or of every rank
  `r` in `heads_rank{r}/` (`--parallel heads`: each rank owns different blocks);
- `data_state.rank{r}.pt` per rank: dataset position, pending batches, mixing buffer, RNG;
- `parallel.json`: mode, world size and step, written last (a folder without it is not a
  checkpoint). Only rank 0 writes; the other ranks send it their files.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.training.mixing_buffer import mixing_buffer

MANIFEST = "parallel.json"
DATA_STATE = "data_state.rank{rank}.pt"
STORE_STATE = "activations_store_state.rank{rank}.safetensors"
RANK_DIR = "heads_rank{rank}"


class ResumableBatches:
    """The store's training batches: SAELens's `mixing_buffer`, preceded by batches it had
    already shuffled before a checkpoint. `state()` captures what is in flight."""

    def __init__(self, store: ActivationsStore, pending: torch.Tensor | None = None,
                 kept: torch.Tensor | None = None) -> None:
        self._store = store
        self._batch_size = store.train_batch_size_tokens
        self._pending = [] if pending is None else [b for b in pending.split(self._batch_size) if len(b)]
        self._kept = kept  # the mixing buffer's content when the checkpoint was taken
        self._mixing: Iterator[torch.Tensor] | None = None

    def __iter__(self) -> ResumableBatches:
        return self

    def __next__(self) -> torch.Tensor:
        if self._pending:
            return self._pending.pop(0)
        if self._mixing is None:
            self._mixing = self._start_mixing()
        return next(self._mixing)

    def _start_mixing(self) -> Iterator[torch.Tensor]:
        store = self._store
        loader: Iterator[torch.Tensor] = store._iterate_filtered_activations()
        if self._kept is not None:
            # the buffer held `kept` when the next LLM batch arrived: feed both as one
            first = next(loader)
            loader = itertools.chain([torch.cat([self._kept, first.to(self._kept.device)])], loader)
            self._kept = None
        return mixing_buffer(
            buffer_size=store.n_batches_in_buffer * store.training_context_size,
            batch_size=self._batch_size,
            activations_loader=loader,
            mix_fraction=store.activations_mixing_fraction,
        )

    def state(self) -> dict[str, torch.Tensor | None]:
        """`pending`: batches shuffled but not yet served `[n * batch, d_in]`; `kept`: the
        mixing buffer's kept activations. Reads the suspended `mixing_buffer` generator's
        locals (`serving_buffer`, `batch_idx`, `storage_buffer`: pinned by a test)."""
        pending, kept = list(self._pending), self._kept
        local = _mixing_buffer_locals(self._mixing)
        if "serving_buffer" in local:
            size = local["batch_size"]
            served_up_to = (local["batch_idx"] + 1) * size
            rest = local["serving_buffer"][served_up_to : local["num_serving_batches"] * size]
            pending.extend(batch for batch in rest.split(size) if len(batch))
            kept = local["storage_buffer"]
        return {
            "pending": torch.cat(pending).cpu() if pending else None,
            "kept": None if kept is None else kept.cpu(),
        }


def _mixing_buffer_locals(generator: Any) -> dict[str, Any]:
    """The local variables of a suspended `mixing_buffer` generator ({} if not started).
    `torch.no_grad()` wraps it in a generator holding the real one as `gen`."""
    while generator is not None and generator.gi_frame is not None:
        local = generator.gi_frame.f_locals
        if "storage_buffer" in local:
            return local
        generator = local.get("gen")
    return {}


def capture_data_state(store: ActivationsStore) -> dict[str, Any]:
    """What a rank needs to continue reading exactly where it stopped."""
    loader = store._dataloader
    if loader is not None and not isinstance(loader, ResumableBatches):
        raise RuntimeError("exact checkpoints need the store's batches from ResumableBatches")
    buffers = loader.state() if loader is not None else {"pending": None, "kept": None}
    return {**buffers, "rng": torch.get_rng_state(), "n_dataset_processed": store.n_dataset_processed}


def restore_data_state(store: ActivationsStore, folder: Path, rank: int) -> None:
    """Fast-forward the store to a rank's saved position, refill its buffers and RNG."""
    store.load(str(folder / STORE_STATE.format(rank=rank)))  # SAELens's fast-forward
    state = torch.load(folder / DATA_STATE.format(rank=rank), weights_only=True)
    device = store.device
    store._dataloader = ResumableBatches(
        store,
        pending=None if state["pending"] is None else state["pending"].to(device),
        kept=None if state["kept"] is None else state["kept"].to(device),
    )
    torch.set_rng_state(state["rng"])


def write_data_state(store: ActivationsStore, state: dict[str, Any], folder: Path, rank: int) -> dict[str, bytes]:
    """This rank's data-state files, as `{name: bytes}` to send to rank 0."""
    path = folder / DATA_STATE.format(rank=rank)
    torch.save(state, path)
    store_path = folder / STORE_STATE.format(rank=rank)
    store.save(str(store_path))
    return {path.name: path.read_bytes(), store_path.name: store_path.read_bytes()}


@dataclass(frozen=True)
class Manifest:
    """`parallel.json`: who wrote a checkpoint, so a resume can check it matches."""

    mode: str
    world_size: int
    n_training_steps: int
    n_training_samples: int

    def write(self, folder: Path) -> None:
        (folder / MANIFEST).write_text(json.dumps(self.__dict__, indent=1))

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise ValueError(
                f"{folder} is not a training checkpoint (no {MANIFEST}); pass a step_N folder "
                "written by train --checkpoint-every or by an interrupt"
            )
        data = json.loads(path.read_text())
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})

    def check_matches(self, mode: str, world_size: int, folder: Path) -> None:
        """ValueError unless this run has the checkpoint's world size and mode."""
        if (self.world_size, self.mode) != (world_size, mode):
            how = "one process" if self.world_size == 1 else (
                f"torchrun --nproc-per-node {self.world_size} ... --parallel {self.mode}"
            )
            raise ValueError(
                f"checkpoint {folder} was written by {self.world_size} rank(s) with "
                f"parallel={self.mode!r}, this run has {world_size} with parallel={mode!r}; "
                f"the data position and (heads mode) the SAE's blocks are per rank, so "
                f"resume with the same layout: {how}"
            )


def trainer_folder(checkpoint: Path, mode: str, rank: int) -> Path:
    """Where this rank's SAELens checkpoint files are inside a `step_N` folder."""
    return checkpoint / RANK_DIR.format(rank=rank) if mode == "heads" else checkpoint
