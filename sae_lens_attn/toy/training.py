"""Train SAELens SAEs on a multi-head toy with SAELens's own `SyntheticSAERunner`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sae_lens import TrainingSAE, TrainingSAEConfig
from sae_lens.config import LoggingConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.synthetic import SyntheticSAERunner, SyntheticSAERunnerConfig

from sae_lens_attn.toy.ground_truth import MultiHeadToy

ARCHITECTURES = ("standard", "block_diagonal")


@dataclass(frozen=True)
class ToyTrainingConfig:
    """Optimiser settings shared by every SAE of a sweep (passed to SAELens's runner).

    The learning rate is constant, then decays linearly to 0 over the last
    `decay_fraction` of the steps (SAELens's "constant" scheduler with decay steps),
    which settles the decoder rows.
    """

    training_samples: int = 300_000
    batch_size: int = 256
    lr: float = 3e-3
    decay_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.training_samples < self.batch_size or self.batch_size < 1:
            raise ValueError(
                f"need training_samples >= batch_size >= 1, got training_samples="
                f"{self.training_samples}, batch_size={self.batch_size}"
            )
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")


def toy_sae_config(
    architecture: str, toy: MultiHeadToy, d_sae: int, l1_coefficient: float
) -> TrainingSAEConfig:
    """SAELens training config of an L1 SAE of `d_sae` latents on `toy`'s data.

    "block_diagonal" (engineer A's architecture, found in SAELens's registry) gets
    `n_heads`; it needs `d_sae` to be a multiple of `n_heads`.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
    if d_sae < 1 or l1_coefficient < 0:
        raise ValueError(f"need d_sae >= 1 and l1_coefficient >= 0, got {d_sae}, {l1_coefficient}")
    kwargs: dict[str, Any] = {"d_in": toy.cfg.d_in, "d_sae": d_sae, "l1_coefficient": l1_coefficient}
    if architecture == "block_diagonal":
        if d_sae % toy.cfg.n_heads:
            raise ValueError(
                f"a block_diagonal SAE needs d_sae divisible by n_heads={toy.cfg.n_heads}, "
                f"got d_sae={d_sae}"
            )
        kwargs["n_heads"] = toy.cfg.n_heads
    return _training_config_class(architecture)(**kwargs)


def _training_config_class(architecture: str) -> type[TrainingSAEConfig]:
    from sae_lens_attn.plugins import register_architectures_with_sae_lens

    register_architectures_with_sae_lens()
    try:
        return get_sae_training_class(architecture)[1]
    except KeyError:
        raise ValueError(
            f"SAELens does not know the architecture {architecture!r}; is the plugin that "
            "provides it installed? (`sae-lens-attn plugins` lists the loaded ones)"
        ) from None


def train_sae_on_toy(
    toy: MultiHeadToy,
    architecture: str,
    d_sae: int,
    l1_coefficient: float,
    training: ToyTrainingConfig | None = None,
) -> TrainingSAE[Any]:
    """Train one SAE on freshly sampled toy data with SAELens's `SyntheticSAERunner`.

    Deterministic for a given `training.seed` (initialisation and data), and leaves the
    global torch RNG as it was.
    """
    training = training or ToyTrainingConfig()
    steps = training.training_samples // training.batch_size
    runner_cfg = SyntheticSAERunnerConfig(
        synthetic_model=toy.synthetic_model.cfg,
        sae=toy_sae_config(architecture, toy, d_sae, l1_coefficient),
        training_samples=training.training_samples,
        batch_size=training.batch_size,
        lr=training.lr,
        lr_decay_steps=int(training.decay_fraction * steps),
        checkpoint_path=None,
        output_path=None,
        run_final_eval=False,
        logger=LoggingConfig(log_to_wandb=False),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training.seed)
        runner = SyntheticSAERunner(runner_cfg, override_synthetic_model=toy.synthetic_model)
        return runner.run().sae
