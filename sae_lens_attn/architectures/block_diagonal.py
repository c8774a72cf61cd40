"""Block-diagonal per-head SAEs on hook_z (SAELens architectures "block_diagonal",
"block_diagonal_batchtopk" and "block_diagonal_jumprelu").

The classes live in `_block_diagonal.py`, `_block_diagonal_batchtopk.py` and
`_block_diagonal_jumprelu.py` (see their docstrings for each architecture). This public
module imports `sae_lens` first, on purpose: importing SAELens runs our plugin, which
registers the classes from those modules. Were the classes defined here, a program whose
first SAELens import came from this module would ask the plugin for them while this
module was still half-initialised, and the registration would fail.
"""

import sae_lens  # noqa: F401  (first: see above)

from sae_lens_attn.architectures._block_diagonal import (
    BlockDiagonalSAE,
    BlockDiagonalSAEConfig,
    BlockDiagonalTrainingSAE,
    BlockDiagonalTrainingSAEConfig,
    PerHeadTopK,
)
from sae_lens_attn.architectures._block_diagonal_batchtopk import (
    BlockDiagonalBatchTopKTrainingSAE,
    BlockDiagonalBatchTopKTrainingSAEConfig,
    PerHeadBatchTopK,
)
from sae_lens_attn.architectures._block_diagonal_jumprelu import (
    BlockDiagonalJumpReLUSAE,
    BlockDiagonalJumpReLUSAEConfig,
    BlockDiagonalJumpReLUTrainingSAE,
    BlockDiagonalJumpReLUTrainingSAEConfig,
)

__all__ = [
    "BlockDiagonalBatchTopKTrainingSAE",
    "BlockDiagonalBatchTopKTrainingSAEConfig",
    "BlockDiagonalJumpReLUSAE",
    "BlockDiagonalJumpReLUSAEConfig",
    "BlockDiagonalJumpReLUTrainingSAE",
    "BlockDiagonalJumpReLUTrainingSAEConfig",
    "BlockDiagonalSAE",
    "BlockDiagonalSAEConfig",
    "BlockDiagonalTrainingSAE",
    "BlockDiagonalTrainingSAEConfig",
    "PerHeadBatchTopK",
    "PerHeadTopK",
]
