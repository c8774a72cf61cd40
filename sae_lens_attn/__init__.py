"""sae_lens_attn: sparse autoencoders on attention outputs (hook_z) for SAELens.

Public names are imported lazily (PEP 562), so `import sae_lens_attn` stays cheap: the
`.pth` hook imports this package at every interpreter start and must not pull in torch,
nor any other module of ours (so this file does not use `_lazy.py` as the sub-packages do).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY_EXPORTS: dict[str, str] = {
    "BlockDiagonalSAE": "sae_lens_attn.architectures.block_diagonal",
    "BlockDiagonalSAEConfig": "sae_lens_attn.architectures.block_diagonal",
    "BlockDiagonalTrainingSAE": "sae_lens_attn.architectures.block_diagonal",
    "BlockDiagonalTrainingSAEConfig": "sae_lens_attn.architectures.block_diagonal",
    "BlockDiagonalBatchTopKTrainingSAE": "sae_lens_attn.architectures.block_diagonal",
    "BlockDiagonalBatchTopKTrainingSAEConfig": "sae_lens_attn.architectures.block_diagonal",
    "BlockDiagonalJumpReLUSAE": "sae_lens_attn.architectures.block_diagonal",
    "BlockDiagonalJumpReLUSAEConfig": "sae_lens_attn.architectures.block_diagonal",
    "BlockDiagonalJumpReLUTrainingSAE": "sae_lens_attn.architectures.block_diagonal",
    "BlockDiagonalJumpReLUTrainingSAEConfig": "sae_lens_attn.architectures.block_diagonal",
    "DashboardConfig": "sae_lens_attn.dashboard.config",
    "FeatureCircuit": "sae_lens_attn.attribution.circuit.feature",
    "FeatureDFA": "sae_lens_attn.attribution.dfa",
    "decoder_head_attribution": "sae_lens_attn.attribution.heads",
    "dfa_by_source": "sae_lens_attn.attribution.dfa",
    "dfa_by_source_and_head": "sae_lens_attn.attribution.dfa",
    "encoder_head_attribution": "sae_lens_attn.attribution.heads",
    "feature_dfa": "sae_lens_attn.attribution.dfa",
    "FamilyRow": "sae_lens_attn.detectors.results",
    "family_summary": "sae_lens_attn.detectors.results",
    "feature_output_directions": "sae_lens_attn.attribution.logit_lens",
    "load_family_rows": "sae_lens_attn.detectors.results",
    "logit_weight_stats": "sae_lens_attn.attribution.logit_lens",
    "save_family_rows": "sae_lens_attn.detectors.results",
    "token_set_enrichment": "sae_lens_attn.detectors.tsea",
    "render_dashboard": "sae_lens_attn.dashboard.render",
    "sae_head_attribution": "sae_lens_attn.attribution.heads",
    "HeadLayout": "sae_lens_attn.sources.head_layout",
    "HookZSource": "sae_lens_attn.sources.hook_z",
    "InvalidInputError": "sae_lens_attn.errors",
    "MissingInputError": "sae_lens_attn.errors",
    "NonFiniteWeightsError": "sae_lens_attn.errors",
    "NoLiveFeaturesError": "sae_lens_attn.errors",
    "check_loaded_sae": "sae_lens_attn.sources.weight_check",
    "check_saved_sae": "sae_lens_attn.sources.saved_sae",
    "load_saved_sae": "sae_lens_attn.sources.saved_sae",
    "HookZTrainingRunner": "sae_lens_attn.training.runner",
    "block_diagonal_config_for": "sae_lens_attn.training.configs",
    "cache_hook_z_activations": "sae_lens_attn.sources.cache",
    "evaluate_hook_z_sae": "sae_lens_attn.training.evaluation",
    "train_hook_z_sae": "sae_lens_attn.training.train",
    "train_hook_z_saes": "sae_lens_attn.training.multi_training",
    "HookZSAESpec": "sae_lens_attn.training.multi_training",
    "SAEInit": "sae_lens_attn.architectures.init_options",
    "feature_circuit": "sae_lens_attn.attribution.circuit.feature",
    "get_plugin_manager": "sae_lens_attn.plugins",
    "register_architectures_with_sae_lens": "sae_lens_attn.plugins",
    "MultiHeadToyConfig": "sae_lens_attn.toy.ground_truth",
    "SweepConfig": "sae_lens_attn.toy.sweep",
    "evaluate_on_toy": "sae_lens_attn.toy.evaluation",
    "make_multi_head_toy": "sae_lens_attn.toy.ground_truth",
    "mmcs": "sae_lens_attn.toy.metrics",
    "run_sweep": "sae_lens_attn.toy.sweep",
    "train_sae_on_toy": "sae_lens_attn.toy.training",
    "corpus_dataset": "sae_lens_attn.models.dataset",
    "load_embedded_model": "sae_lens_attn.models.embedded",
    "load_model": "sae_lens_attn.models.embedded",
    "run_demo": "sae_lens_attn.demo.pipeline",
    "configure_runtime": "sae_lens_attn.runtime",
    "display_token": "sae_lens_attn.models.token_display",
}

__all__ = ["__version__", *sorted(_LAZY_EXPORTS)]


def __getattr__(name: str):  # -> Any; `typing` is not imported at start-up
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'sae_lens_attn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS))
