"""Dictionary size x sparsity coefficient sweeps on a multi-head toy."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sae_lens_attn._safe_output import write_csv
from sae_lens_attn.toy.evaluation import ToyEvaluation, evaluate_on_toy
from sae_lens_attn.toy.ground_truth import MultiHeadToy
from sae_lens_attn.toy.metrics import dictionary_mmcs_matrix
from sae_lens_attn.toy.training import (
    ARCHITECTURES,
    ToyTrainingConfig,
    toy_sae_config,
    train_sae_on_toy,
)


def default_dictionary_sizes(n_features: int, n_heads: int) -> tuple[int, ...]:
    """`n_features` times 1/2, 1 and 2, rounded to multiples of `n_heads` (so a
    block-diagonal SAE can have them): below, at and above the true number."""
    return tuple(
        max(n_heads, round(n_features * multiple / n_heads) * n_heads)
        for multiple in (0.5, 1.0, 2.0)
    )


@dataclass(frozen=True)
class SweepConfig:
    """The grid: every architecture x dictionary size x L1 coefficient is one SAE."""

    dictionary_sizes: tuple[int, ...]
    l1_coefficients: tuple[float, ...] = (0.15, 0.3)
    architectures: tuple[str, ...] = ARCHITECTURES
    training: ToyTrainingConfig = field(default_factory=ToyTrainingConfig)
    eval_samples: int = 20_000

    def __post_init__(self) -> None:
        if not self.dictionary_sizes or not self.l1_coefficients or not self.architectures:
            raise ValueError("a sweep needs at least one size, one L1 coefficient and one architecture")
        unknown = set(self.architectures) - set(ARCHITECTURES)
        if unknown:
            raise ValueError(f"unknown architectures {sorted(unknown)}; valid: {ARCHITECTURES}")
        sizes = self.dictionary_sizes
        if len(set(sizes)) != len(sizes) or min(sizes) < 1:
            raise ValueError(f"dictionary sizes must be distinct positive integers, got {list(sizes)}")

    @property
    def grid(self) -> list[tuple[str, int, float]]:
        """`(architecture, d_sae, l1_coefficient)` of every SAE, in training order."""
        return [
            (architecture, d_sae, l1)
            for architecture in self.architectures
            for l1 in self.l1_coefficients
            for d_sae in self.dictionary_sizes
        ]

    def check(self, toy: MultiHeadToy) -> None:
        """Build every SAE config of the grid for `toy`: a ValueError for a bad one (say, a
        block-diagonal size that `n_heads` does not divide) before any training."""
        for architecture, d_sae, l1 in self.grid:
            toy_sae_config(architecture, toy, d_sae, l1)


@dataclass
class SweepRun:
    """One trained SAE of a sweep: its settings, its scores and its decoder."""

    architecture: str
    d_sae: int
    l1_coefficient: float
    n_params: int
    train_seconds: float
    evaluation: ToyEvaluation
    decoder: torch.Tensor = field(repr=False)  # [d_sae, d_in]

    def to_row(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "d_sae": self.d_sae,
            "l1_coefficient": self.l1_coefficient,
            "n_params": self.n_params,
            "train_seconds": round(self.train_seconds, 2),
            **self.evaluation.to_row(),
        }

    @property
    def live_decoder(self) -> torch.Tensor:
        """Decoder rows of the latents that fired during evaluation `[n_alive, d_in]`."""
        return self.decoder[self.evaluation.alive]


@dataclass
class SweepResult:
    toy: MultiHeadToy
    config: SweepConfig
    runs: list[SweepRun]

    def rows(self) -> list[dict[str, Any]]:
        return [run.to_row() for run in self.runs]

    def group(self, architecture: str, l1_coefficient: float) -> list[SweepRun]:
        """Runs of one architecture and L1 coefficient, by increasing dictionary size."""
        runs = [
            run
            for run in self.runs
            if run.architecture == architecture and run.l1_coefficient == l1_coefficient
        ]
        return sorted(runs, key=lambda run: run.d_sae)

    def dictionary_mmcs(self, architecture: str, l1_coefficient: float) -> torch.Tensor:
        """`[n_sizes, n_sizes]` MMCS between the live dictionaries of one group: entry
        `(i, j)` is how well size j reproduces size i's rows."""
        return dictionary_mmcs_matrix(
            [run.live_decoder for run in self.group(architecture, l1_coefficient)]
        )

    def write_csv(self, path: Path) -> Path:
        return write_csv(path, self.rows())


def run_sweep(toy: MultiHeadToy, config: SweepConfig, progress: bool = True) -> SweepResult:
    """Train and score every SAE of the grid (SAELens's trainer), with a progress bar.
    Checks the whole grid (`SweepConfig.check`) before training anything."""
    config.check(toy)
    runs: list[SweepRun] = []
    bar = tqdm(config.grid, desc="toy sweep", disable=not progress)
    for architecture, d_sae, l1 in bar:
        bar.set_postfix_str(f"{architecture} d_sae={d_sae} l1={l1:g}")
        start = time.perf_counter()
        sae = train_sae_on_toy(toy, architecture, d_sae, l1, config.training)
        seconds = time.perf_counter() - start
        evaluation = evaluate_on_toy(sae, toy, config.eval_samples, seed=config.training.seed)
        runs.append(
            SweepRun(
                architecture=architecture,
                d_sae=d_sae,
                l1_coefficient=l1,
                n_params=sum(p.numel() for p in sae.parameters()),
                train_seconds=seconds,
                evaluation=evaluation,
                decoder=sae.W_dec.detach().clone(),
            )
        )
    return SweepResult(toy=toy, config=config, runs=runs)


def parse_list(text: str, kind: type) -> tuple[Any, ...]:
    """'1,3.5' -> (1.0, 3.5) with kind=float; a ValueError that shows the format."""
    try:
        values = tuple(kind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"bad list {text!r}: expected comma-separated values like '1,2,4'") from None
    if not values:
        raise ValueError(f"empty list {text!r}")
    return values
