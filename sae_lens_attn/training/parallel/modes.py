"""Pick the `Parallelism` of a training run from `--parallel` and torchrun's environment."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sae_lens_attn.training.parallel.base import PARALLEL_MODES, SINGLE, Parallelism
from sae_lens_attn.training.parallel.data import DataParallel
from sae_lens_attn.training.parallel.distributed import launched_by_torchrun, torchrun_process_group
from sae_lens_attn.training.parallel.heads import HeadParallel


@contextmanager
def parallel_training(mode: str | Parallelism | None, device: str) -> Iterator[Parallelism]:
    """The `Parallelism` for `mode` ("data", "heads", "none"/None: one process; None under
    torchrun means "data"), joining torchrun's process group for the distributed modes.
    A `Parallelism` is used as it is (its caller owns the process group)."""
    if isinstance(mode, Parallelism):
        yield mode
        return
    if mode is None:
        mode = "data" if launched_by_torchrun() else SINGLE
    if mode == SINGLE:
        yield Parallelism()
        return
    if mode not in PARALLEL_MODES:
        raise ValueError(f"unknown parallel mode {mode!r}; expected one of {PARALLEL_MODES}")
    with torchrun_process_group(device) as comm:
        yield DataParallel(comm) if mode == "data" else HeadParallel(comm)
