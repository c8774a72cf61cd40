"""Data-driven initialisation (`SAEInit`) of SAEs about to train: draw the first batches
of training inputs, bring them to the space the SAE trains in, and initialise from them.

The runners call these right after they are built (after any per-head scale is
estimated) and before training starts; the batches drawn are consumed, as SAELens's own
norm estimate and the per-head scale estimate consume theirs. A resumed run keeps its
checkpoint's weights and draws nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens.training.activations_store import ActivationsStore

from sae_lens_attn.architectures.data_init import SAEInit, initialise_from_sample

METADATA_KEY = "initialisation"


@torch.no_grad()
def draw_sample(store: ActivationsStore, n_batches: int) -> torch.Tensor:
    """`[tokens, d_in]`: `n_batches` LLM batches of what a single-source store feeds the
    trainer (scaled per head if its source normalises)."""
    return torch.cat([store.get_raw_llm_batch()[0] for _ in range(n_batches)])


@torch.no_grad()
def draw_multi_sample(store: Any, n_batches: int) -> dict[str, torch.Tensor]:
    """`{stream key: [tokens, d_in]}` from one multi-hook store's next `n_batches` LLM
    batches (one forward pass each for all streams)."""
    parts: dict[str, list[torch.Tensor]] = {}
    for _ in range(n_batches):
        for key, acts in store.get_multi_hook_activations(store.get_batch_tokens()).items():
            parts.setdefault(key, []).append(acts.flatten(0, -2))
    return {key: torch.cat(chunks) for key, chunks in parts.items()}


@torch.no_grad()
def initialise_training_sae(sae: Any, sample: torch.Tensor, init: SAEInit) -> None:
    """Initialise `sae` (in place) from `sample [tokens, d_in]` of its training inputs and
    record what was done in `sae.cfg.metadata["initialisation"]`.

    The sample is first normalised as the trainer will normalise it: SAELens's
    `expected_average_only_in` factor `sqrt(d_in) / mean ||x||` (estimated on the
    sample), then the SAE's run-time normalisation."""
    normalisation = sae.cfg.normalize_activations
    if normalisation == "covariance_whitening":
        raise ValueError(
            "data-driven initialisation cannot be combined with normalize_activations="
            "'covariance_whitening' (the whitened inputs have zero mean and no principal "
            "subspace); use 'none' or 'expected_average_only_in'"
        )
    sample = sample.to(torch.float32)
    if normalisation == "expected_average_only_in":
        sample = sample * (sae.cfg.d_in**0.5 / sample.norm(dim=-1).mean())
    sample = sae.run_time_activation_norm_fn_in(sample)
    sae.cfg.metadata[METADATA_KEY] = initialise_from_sample(sae, sample, init)
