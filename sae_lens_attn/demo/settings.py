"""How big the demo runs: the full demo and the reduced one for tests and CI."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

ARCHITECTURES = ("block_diagonal", "standard")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of every demo step.

    `train_sequences` / `eval_sequences`: corpus rows of `context_size` tokens (train and
    held-out split). `eval_batches` x `eval_batch_prompts` prompts feed SAELens's evals.
    `dashboard_live_features`: how many live features (lowest indices first) get a
    dashboard, besides every induction-family feature; `dashboard_prompts` held-out
    prompts are searched for their top activations. `sae_kwargs` are per-architecture
    SAELens training-config fields (`l1_coefficient`, ...).
    """

    layer: int = 1
    context_size: int = 128
    train_sequences: int = 8192
    eval_sequences: int = 256
    training_tokens: int = 1_000_000
    train_batch_size_tokens: int = 1024
    expansion_factor: int = 8
    lr: float = 1e-3
    sae_kwargs: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "block_diagonal": {"activation": "topk"},  # train's default: per-head TopK, k = d_head // 4
            "standard": {"l1_coefficient": 2.0},
        }
    )
    eval_batches: int = 8
    eval_batch_prompts: int = 8
    dashboard_live_features: int = 50
    dashboard_prompts: int = 128
    dashboard_architectures: tuple[str, ...] = ARCHITECTURES
    detector_prompts: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = set(self.sae_kwargs) - set(ARCHITECTURES)
        if unknown:
            raise ValueError(f"sae_kwargs for unknown architectures {sorted(unknown)}; "
                             f"the demo trains {ARCHITECTURES}")
        if min(self.train_sequences, self.eval_sequences, self.training_tokens) < 1:
            raise ValueError("train_sequences, eval_sequences and training_tokens must be >= 1")


FULL = DemoSettings()

QUICK = replace(
    FULL,
    context_size=64,
    train_sequences=256,
    eval_sequences=32,
    training_tokens=16_384,
    train_batch_size_tokens=512,
    expansion_factor=2,
    eval_batches=2,
    eval_batch_prompts=4,
    dashboard_live_features=3,
    dashboard_prompts=16,
    dashboard_architectures=("block_diagonal",),
    detector_prompts=2,
)
