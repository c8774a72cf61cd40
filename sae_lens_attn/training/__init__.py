"""Training: SAELens's runner and trainer fed by hook_z sources, several SAEs from one model
pass, exact checkpoints, SAELens's evals, publishing SAE folders, and the parallel modes.

Names are imported lazily (PEP 562), so importing one of them does not import them all.
"""

from __future__ import annotations

from sae_lens_attn._lazy import lazy_exports

# public name -> module that defines it
_LAZY_EXPORTS: dict[str, str] = {
    "HookZTrainingRunner": "sae_lens_attn.training.runner",
    "HookZSAETrainer": "sae_lens_attn.training.trainer",
    "HookZEvaluator": "sae_lens_attn.training.evaluation",
    "evaluate_hook_z_sae": "sae_lens_attn.training.evaluation",
    "block_diagonal_config_for": "sae_lens_attn.training.configs",
    "sae_config_for": "sae_lens_attn.training.configs",
    "fold_input_scale": "sae_lens_attn.training.folding",
    "train_hook_z_sae": "sae_lens_attn.training.train",
    "train_hook_z_saes": "sae_lens_attn.training.multi_training",
    "HookZSAESpec": "sae_lens_attn.training.multi_training",
    "HookZMultiSAETrainingRunner": "sae_lens_attn.training.multi_runner",
}

__all__ = sorted(_LAZY_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY_EXPORTS)
