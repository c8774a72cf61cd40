"""Training wall-clock seconds per SAE, recorded in its metadata (and so in `saes.json`).

One SAE trained alone: `training_seconds` is the wall-clock time of SAELens's `fit` (model
passes, SAE steps, the scaling estimate). Several SAEs from one model pass: the time of
each SAE's own `SAETrainer.step` is measured, the rest of `fit` (the shared model passes
and data shuffling) is split equally among the SAEs, so the SAEs' `training_seconds` add
up to the run's wall-clock time; `training_seconds_alone` adds the whole shared part
instead, an estimate of what training that SAE alone would have cost. Both are in
`cfg.metadata` with `training_tokens` (the tokens the trainer consumed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any


@contextmanager
def timed_steps(trainers: Mapping[str, Any]) -> Iterator[dict[str, float]]:
    """Accumulate the seconds spent in each trainer's `step` into the yielded
    `{name: seconds}` while the block runs (the instances' `step` is wrapped, then
    restored)."""
    seconds = dict.fromkeys(trainers, 0.0)
    own_steps = {name: vars(trainer).get("step") for name, trainer in trainers.items()}
    for name, trainer in trainers.items():
        trainer.step = _timed(trainer.step, seconds, name)
    try:
        yield seconds
    finally:
        for name, trainer in trainers.items():
            if own_steps[name] is None:
                del trainer.step
            else:
                trainer.step = own_steps[name]


def _timed(step: Callable[..., Any], seconds: dict[str, float], name: str) -> Callable[..., Any]:
    def timed_step(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return step(*args, **kwargs)
        finally:
            seconds[name] += time.perf_counter() - began

    return timed_step


def record_training_time(
    saes: Mapping[str, Any], step_seconds: Mapping[str, float], total_seconds: float, tokens: int
) -> None:
    """Write `training_seconds`, `training_seconds_alone` and `training_tokens` into each
    SAE's metadata: its own step seconds plus an equal share (alone: all) of the time
    `total_seconds` spent outside the SAEs' steps."""
    shared = max(total_seconds - sum(step_seconds.values()), 0.0)
    for name, sae in saes.items():
        own = step_seconds[name]
        sae.cfg.metadata["training_seconds"] = own + shared / len(saes)
        sae.cfg.metadata["training_seconds_alone"] = own + shared
        sae.cfg.metadata["training_tokens"] = int(tokens)
