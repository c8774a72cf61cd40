"""Block-diagonal per-head SAE on hook_z (SAELens architecture "block_diagonal").

The classes live in `_block_diagonal.py` (see its docstring for the architecture). This
public module imports `sae_lens` first, on purpose: importing SAELens runs our plugin,
which registers the classes from `_block_diagonal`. Were the classes defined here, a
program whose first SAELens import came from this module would ask the plugin for them
while this module was still half-initialised, and the registration would fail.
"""

import sae_lens  # noqa: F401  (first: see above)

from sae_lens_attn.architectures._block_diagonal import (
    BlockDiagonalSAE,
    BlockDiagonalSAEConfig,
    BlockDiagonalTrainingSAE,
    BlockDiagonalTrainingSAEConfig,
    PerHeadTopK,
)

__all__ = [
    "BlockDiagonalSAE",
    "BlockDiagonalSAEConfig",
    "BlockDiagonalTrainingSAE",
    "BlockDiagonalTrainingSAEConfig",
    "PerHeadTopK",
]
