"""SAE architectures for attention outputs, registered with SAELens by name.

`block_diagonal`: `block_diagonal.BlockDiagonalSAE` and friends (per-head block-diagonal
encoder and decoder). This package imports nothing heavy: `plugin.py` names the classes
and SAELens's registry receives them when `sae_lens` is imported.
"""
