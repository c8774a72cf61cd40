"""Activation sources: where SAE training inputs come from, and their head layout.

Names other than `HeadLayout` are imported lazily (PEP 562): the plugin module
`sae_lens_attn.sources.plugin` lives in this package and must stay cheap to import.
"""

from __future__ import annotations

import importlib

from sae_lens_attn.sources.head_layout import HeadLayout, layer_of_hook_z

# public name -> module that defines it
_LAZY_EXPORTS: dict[str, str] = {
    "HookZSource": "sae_lens_attn.sources.hook_z",
    "HookZActivationsStore": "sae_lens_attn.sources.store",
    "HookZTrainingRunner": "sae_lens_attn.sources.runner",
    "HookZEvaluator": "sae_lens_attn.sources.evaluation",
    "evaluate_hook_z_sae": "sae_lens_attn.sources.evaluation",
    "HookZCacheActivationsRunner": "sae_lens_attn.sources.cache",
    "cache_hook_z_activations": "sae_lens_attn.sources.cache",
    "block_diagonal_config_for": "sae_lens_attn.sources.configs",
    "sae_config_for": "sae_lens_attn.sources.configs",
    "fold_input_scale": "sae_lens_attn.sources.folding",
    "train_hook_z_sae": "sae_lens_attn.sources.training",
    "train_hook_z_saes": "sae_lens_attn.sources.multi_training",
    "HookZSAESpec": "sae_lens_attn.sources.multi_training",
    "HookZMultiSAETrainingRunner": "sae_lens_attn.sources.multi_runner",
    "MultiHookZActivationsStore": "sae_lens_attn.sources.multi_store",
}

__all__ = ["HeadLayout", "layer_of_hook_z", *sorted(_LAZY_EXPORTS)]


def __getattr__(name: str):  # -> Any
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'sae_lens_attn.sources' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS))
