"""Process groups for `torchrun`: who this rank is, and the few collectives training uses.

Everything goes through `torch.distributed` (gloo on CPU, NCCL on CUDA); nothing here
moves bytes itself. `Communicator` wraps the collectives training needs and counts the
payload bytes this rank hands to them (`payload_bytes`), which the benchmark reports.

A process group is created with a timeout (`SAE_LENS_ATTN_DIST_TIMEOUT` seconds, 300 by
default), so a collective whose peer hangs fails instead of waiting forever; a peer that
dies is noticed sooner, by gloo's closed connection and by torchrun, which stops the
other workers and names the rank that failed first.
"""

from __future__ import annotations

import os
import pickle
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

TIMEOUT_ENV = "SAE_LENS_ATTN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched_by_torchrun() -> bool:
    """True when this process is a worker started by torchrun (its env variables set)."""
    return all(name in os.environ for name in _TORCHRUN_ENV)


def timeout_from_env() -> timedelta:
    """The collective timeout: `SAE_LENS_ATTN_DIST_TIMEOUT` seconds (a positive number)."""
    text = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds")
    return timedelta(seconds=seconds)


@dataclass
class Communicator:
    """This rank of a `torch.distributed` process group, and its collectives.

    `device` is where this rank trains (`cuda:LOCAL_RANK` for CUDA, NCCL's requirement).
    `payload_bytes[purpose]` counts the bytes of tensors (and pickled objects) this rank
    passed to collectives; on the wire a ring all-reduce sends about `2 (W-1)/W` times that.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    payload_bytes: Counter[str] = field(default_factory=Counter)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor, op: str, purpose: str) -> torch.Tensor:
        """In place over all ranks: `op` is "sum", "min" or "max"."""
        ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
        self.payload_bytes[purpose] += tensor.numel() * tensor.element_size()
        work = self._on_device(tensor)
        dist.all_reduce(work, op=ops[op])
        if work is not tensor:
            tensor.copy_(work)
        return tensor

    def _on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """NCCL reduces CUDA tensors only: a CPU tensor (a per-head scale, a flag) goes
        through a copy on this rank's GPU."""
        if self.device.type == "cuda" and tensor.device != self.device:
            return tensor.to(self.device)
        return tensor

    def broadcast(self, tensor: torch.Tensor, purpose: str) -> torch.Tensor:
        """In place: rank 0's `tensor` on every rank."""
        self.payload_bytes[purpose] += tensor.numel() * tensor.element_size() if self.is_main else 0
        work = self._on_device(tensor)
        dist.broadcast(work, src=0)
        if work is not tensor:
            tensor.copy_(work)
        return tensor

    def gather_to_main(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` (picklable), in rank order, on rank 0; None elsewhere."""
        self.payload_bytes["gather"] += len(pickle.dumps(obj))
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered

    def broadcast_from_main(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        self.payload_bytes["broadcast"] += len(pickle.dumps(obj)) if self.is_main else 0
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        dist.barrier()


def backend_for(device: str) -> str:
    """NCCL for CUDA devices, gloo otherwise (CPU: what the tests use)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(device: str) -> str:
    """The device this process trains on: under torchrun `cuda` becomes `cuda:LOCAL_RANK`."""
    parsed = torch.device(device)
    if parsed.type == "cuda" and parsed.index is None and launched_by_torchrun():
        return str(torch.device("cuda", int(os.environ["LOCAL_RANK"])))
    return device


@contextmanager
def torchrun_process_group(device: str) -> Iterator[Communicator]:
    """Join (or reuse) the default process group torchrun set up the environment for.

    The group is created with a bounded timeout and destroyed on exit if created here.
    """
    if not launched_by_torchrun():
        raise ValueError(
            "distributed training needs the environment torchrun sets (RANK, WORLD_SIZE, "
            "LOCAL_RANK, MASTER_ADDR, MASTER_PORT); launch with: torchrun --nproc-per-node N "
            "-m sae_lens_attn train ..."
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    train_device = torch.device(rank_device(device))
    created = not dist.is_initialized()
    if created:
        if train_device.type == "cuda":
            torch.cuda.set_device(train_device)
        dist.init_process_group(
            backend=backend_for(device),
            timeout=timeout_from_env(),
            device_id=train_device if train_device.type == "cuda" else None,
        )
    try:
        yield Communicator(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=local_rank,
            device=train_device,
        )
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
