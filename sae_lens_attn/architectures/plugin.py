"""Built-in plugin: the block-diagonal family (`block_diagonal`, `block_diagonal_batchtopk`,
`block_diagonal_jumprelu`).

Cheap to import: the SAE classes (torch, sae_lens) are imported only by each `load()`.
"""

from __future__ import annotations

from sae_lens_attn.plugins import ArchitectureClasses, PluginEntry, hookimpl


def _load_block_diagonal() -> ArchitectureClasses:
    # the modules that define the classes, not the public re-export (see block_diagonal.py)
    from sae_lens_attn.architectures import _block_diagonal as block_diagonal

    return ArchitectureClasses(
        sae_class=block_diagonal.BlockDiagonalSAE,
        config_class=block_diagonal.BlockDiagonalSAEConfig,
        training_sae_class=block_diagonal.BlockDiagonalTrainingSAE,
        training_config_class=block_diagonal.BlockDiagonalTrainingSAEConfig,
    )


def _load_block_diagonal_jumprelu() -> ArchitectureClasses:
    from sae_lens_attn.architectures import _block_diagonal_jumprelu as jumprelu

    return ArchitectureClasses(
        sae_class=jumprelu.BlockDiagonalJumpReLUSAE,
        config_class=jumprelu.BlockDiagonalJumpReLUSAEConfig,
        training_sae_class=jumprelu.BlockDiagonalJumpReLUTrainingSAE,
        training_config_class=jumprelu.BlockDiagonalJumpReLUTrainingSAEConfig,
    )


def _load_block_diagonal_batchtopk() -> ArchitectureClasses:
    from sae_lens_attn.architectures import _block_diagonal_batchtopk as batchtopk

    return ArchitectureClasses(  # training only: it saves as block_diagonal_jumprelu
        sae_class=None,
        config_class=None,
        training_sae_class=batchtopk.BlockDiagonalBatchTopKTrainingSAE,
        training_config_class=batchtopk.BlockDiagonalBatchTopKTrainingSAEConfig,
    )


@hookimpl
def sae_lens_attn_architectures() -> list[PluginEntry]:
    return [
        PluginEntry(
            "block_diagonal",
            "hook_z SAE with one block of features per attention head (relu or per-head topk)",
            load=_load_block_diagonal,
        ),
        # before batchtopk, which saves as it
        PluginEntry(
            "block_diagonal_jumprelu",
            "block_diagonal with SAELens's JumpReLU (learned threshold per feature, L0 penalty)",
            load=_load_block_diagonal_jumprelu,
        ),
        PluginEntry(
            "block_diagonal_batchtopk",
            "block_diagonal with SAELens's BatchTopK in each head's block; saves as block_diagonal_jumprelu",
            load=_load_block_diagonal_batchtopk,
        ),
    ]
