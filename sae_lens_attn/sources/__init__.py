"""Activation sources: what produces SAE inputs from a model (hook_z, its head layout,
activation stores and caches, token rows, saved SAE folders, SAELens pretrained SAEs); training lives in `training/`.

Names other than `HeadLayout` are imported lazily (PEP 562): the plugin module
`sae_lens_attn.sources.plugin` lives in this package and must stay cheap to import.
"""

from __future__ import annotations

from sae_lens_attn._lazy import lazy_exports
from sae_lens_attn.sources.head_layout import HeadLayout, layer_of_hook_z

# public name -> module that defines it
_LAZY_EXPORTS: dict[str, str] = {
    "HookZSource": "sae_lens_attn.sources.hook_z",
    "HookZActivationsStore": "sae_lens_attn.sources.store",
    "HookZCacheActivationsRunner": "sae_lens_attn.sources.cache",
    "cache_hook_z_activations": "sae_lens_attn.sources.cache",
    "MultiHookZActivationsStore": "sae_lens_attn.sources.multi_store",
    "check_saved_sae": "sae_lens_attn.sources.saved_sae",
    "load_saved_sae": "sae_lens_attn.sources.saved_sae",
    "load_pretrained_sae": "sae_lens_attn.sources.pretrained_sae",
}

# names that moved to `sae_lens_attn.training` (0.2): they still work here, with a warning
_MOVED_TO_TRAINING = dict.fromkeys(
    (
        "HookZTrainingRunner", "HookZEvaluator", "evaluate_hook_z_sae", "block_diagonal_config_for",
        "sae_config_for", "fold_input_scale", "train_hook_z_sae", "train_hook_z_saes",
        "HookZSAESpec", "HookZMultiSAETrainingRunner",
    ),
    "sae_lens_attn.training",
)

__all__ = ["HeadLayout", "layer_of_hook_z", *sorted(_LAZY_EXPORTS)]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY_EXPORTS, _MOVED_TO_TRAINING)
