"""Built-in plugin: the `block_diagonal` architecture.

Cheap to import: the SAE classes (torch, sae_lens) are imported only by `load()`.
"""

from __future__ import annotations

from sae_lens_attn.plugins import ArchitectureClasses, PluginEntry, hookimpl


def _load_block_diagonal() -> ArchitectureClasses:
    # the module that defines the classes, not the public re-export (see block_diagonal.py)
    from sae_lens_attn.architectures import _block_diagonal as block_diagonal

    return ArchitectureClasses(
        sae_class=block_diagonal.BlockDiagonalSAE,
        config_class=block_diagonal.BlockDiagonalSAEConfig,
        training_sae_class=block_diagonal.BlockDiagonalTrainingSAE,
        training_config_class=block_diagonal.BlockDiagonalTrainingSAEConfig,
    )


@hookimpl
def sae_lens_attn_architectures() -> list[PluginEntry]:
    return [
        PluginEntry(
            "block_diagonal",
            "hook_z SAE with one block of features per attention head (relu or per-head topk)",
            load=_load_block_diagonal,
        )
    ]
