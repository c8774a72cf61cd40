"""`train`'s torchrun, checkpoint and resume options, and how their outcomes are reported.

`--parallel data|heads` (default `data` under torchrun), `--checkpoint-every N` (steps)
and `--resume DIR`: see docs/distributed.md. Under torchrun only rank 0 prints; an error
names the rank it happened on.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sae_lens_attn.commands._values import (
    positive_int,
)
from sae_lens_attn.errors import InvalidInputError, PlainRuntimeError

T = TypeVar("T")
INTERRUPTED_EXIT_CODE = 130


def add_scaleout_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--parallel", choices=("data", "heads"), default=None,
        help="under torchrun: 'data' (default; ranks read disjoint token shards, gradients "
        "averaged) or 'heads' (block_diagonal only; each rank trains its heads' blocks); "
        "default: data under torchrun, none otherwise",
    )
    parser.add_argument(
        "--checkpoint-every", type=positive_int, default=None, metavar="STEPS",
        help="save a checkpoint every STEPS training steps (into OUT-checkpoints/<run id>/step_N); "
        "Ctrl-C always saves one (default: none but that one)",
    )
    parser.add_argument(
        "--resume", type=Path, default=None, metavar="DIR",
        help="continue from a step_N checkpoint folder (same options and world size; default: "
        "start afresh)",
    )


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def under_torchrun() -> bool:
    """This process was started by torchrun (it set WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def say(message: str) -> None:
    """Print on rank 0 only (every process prints when not under torchrun)."""
    if rank() == 0:
        print(message, flush=True)


def scaleout_options(args: argparse.Namespace) -> dict[str, Any]:
    """`train_hook_z_sae` keyword arguments for these options (checkpoints always go
    next to `--out`, so an interrupt has somewhere to save)."""
    if args.parallel is not None and not under_torchrun():
        raise InvalidInputError(
            f"--parallel {args.parallel}: needs processes started by torchrun, e.g. "
            "torchrun --standalone --nproc-per-node 2 -m sae_lens_attn train ..."
        )
    if args.resume is not None and not args.resume.is_dir():
        raise InvalidInputError(f"--resume {args.resume}: not a folder; pass a step_N checkpoint folder")
    return {
        "parallel": args.parallel,
        "checkpoint_every": args.checkpoint_every,
        "resume_from": args.resume,
        "checkpoint_path": f"{args.out}-checkpoints",
    }


def run_training(train: Callable[[], T]) -> T:
    """`train()`, with interrupts and failures turned into one-line messages."""
    from sae_lens_attn.training.trainer import TrainingInterrupted

    where = f"rank {rank()}: " if under_torchrun() else ""
    try:
        return train()
    except TrainingInterrupted as stop:
        if stop.checkpoint is not None:
            command = " ".join(shlex.quote(a) for a in _without_resume(sys.argv[1:]))
            launcher = "torchrun <same options> -m sae_lens_attn" if where else "sae-lens-attn"
            say(f"{stop}\nresume with: {launcher} {command} --resume {shlex.quote(str(stop.checkpoint))}")
        else:
            say(str(stop))
        raise SystemExit(INTERRUPTED_EXIT_CODE) from None
    except (ValueError, PlainRuntimeError) as error:  # bad input, or a diverged run
        raise SystemExit(f"error: {where}{error}") from None
    except RuntimeError as error:  # torch.distributed's errors (DistBackendError) included
        if not where:
            raise
        raise SystemExit(
            f"error: {where}a collective operation failed ({str(error).splitlines()[0]}); "
            "another rank probably stopped: torchrun's summary names the rank that failed first"
        ) from None


def _without_resume(argv: list[str]) -> list[str]:
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            kept.append(arg)
    return kept
