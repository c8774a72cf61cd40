"""SAELens's evals (`run_evals`) for hook_z SAEs: during training and on a finished SAE.

SAELens evaluates a hook_z SAE on the whole flattened hook_z, splicing its
reconstruction into every head. That is right for SAEs on all heads of a layer; an SAE
on a subset of heads has no place in those evals, so both entry points say so instead of
returning numbers about the wrong thing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens import SAE
from sae_lens.config import HfDataset
from sae_lens.evals import EvalConfig, run_evals
from sae_lens.llm_sae_training_runner import LLMSaeEvaluator
from sae_lens.training.activation_scaler import ActivationScaler, ActivationWhitening
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.training.types import DataProvider
from transformer_lens import HookedTransformer
from typing_extensions import override

from sae_lens_attn._upstream import disable_datasets_torchvision_formatting
from sae_lens_attn.sources.head_layout import HeadLayout
from sae_lens_attn.sources.hook_z import HookZSource
from sae_lens_attn.sources.tokens import as_token_dataset, row_length


def subset_message(layout: HeadLayout) -> str:
    return (
        f"SAELens's evals splice an SAE into all {layout.n_model_heads} heads of "
        f"{layout.hook_name}; this SAE reads heads {list(layout.heads)} only, so they do "
        "not apply"
    )


def with_input_scale(scaler: ActivationScaler, scale: torch.Tensor | None) -> ActivationScaler:
    """A scaler doing what the training pipeline did: `x * scale` per dimension (the
    source's per-head normalisation), then `scaler`'s own scalar factor. `scale`: `[d_in]`."""
    if scale is None:
        return scaler
    if scaler.whitening is not None:
        raise ValueError("per-head normalisation cannot be combined with covariance whitening")
    scale = scale.to(torch.float64)
    return ActivationScaler(
        scaling_factor=scaler.scaling_factor,
        whitening=ActivationWhitening(
            mean=torch.zeros_like(scale),
            matrix=torch.diag(scale),
            inverse_matrix=torch.diag(1 / scale),
        ),
    )


@dataclass
class HookZEvaluator(LLMSaeEvaluator[Any]):
    """The runner's evaluator, aware of the source: during training the SAE takes
    per-head-scaled input, so the evals scale raw hook_z the same way."""

    source: HookZSource

    @override
    def __call__(
        self, sae: Any, data_provider: DataProvider, activation_scaler: ActivationScaler
    ) -> dict[str, Any]:
        if not self.source.layout.uses_all_heads:
            warnings.warn(subset_message(self.source.layout) + "; skipping them", stacklevel=2)
            return {}
        scaler = with_input_scale(activation_scaler, self.source.input_scale)
        return super().__call__(sae, data_provider, scaler)


def evaluate_hook_z_sae(
    sae: SAE[Any],
    model: HookedTransformer,
    dataset: HfDataset | torch.Tensor | str,
    n_batches: int = 10,
    batch_size_prompts: int = 8,
    context_size: int | None = None,
) -> dict[str, float]:
    """SAELens's `run_evals` on a finished hook_z SAE over all heads (raw hook_z input).

    Returns the flat metrics: `ce_loss_score`, `ce_loss_with_sae`, `ce_loss_without_sae`,
    `ce_loss_with_ablation`, `explained_variance`, `mse`, `cossim`, `l0`, `l1`,
    `l2_ratio`, ... `dataset` is pretokenized (`input_ids`/`tokens` rows) or a
    `[n_seq, pos]` token tensor.
    """
    layout = HeadLayout.from_sae(sae, model)
    if not layout.uses_all_heads:
        raise ValueError(subset_message(layout))
    disable_datasets_torchvision_formatting()
    dataset = as_token_dataset(dataset) if not isinstance(dataset, str) else dataset
    context_size = context_size or sae.cfg.metadata.context_size or row_length(dataset)
    store = ActivationsStore.from_sae(
        model,
        sae,
        dataset,
        context_size=context_size,
        store_batch_size_prompts=batch_size_prompts,
        total_tokens=n_batches * batch_size_prompts * context_size,
        device=str(sae.device),
    )
    eval_config = EvalConfig(
        batch_size_prompts=batch_size_prompts,
        n_eval_reconstruction_batches=n_batches,
        n_eval_sparsity_variance_batches=n_batches,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
    )
    metrics, _ = run_evals(
        sae, store, model, ActivationScaler(), eval_config, exclude_special_tokens=False
    )
    return {name: value for group in metrics.values() for name, value in group.items()}
