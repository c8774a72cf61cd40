"""Block-diagonal per-head SAE on hook_z: SAELens architecture "block_diagonal".

The input is hook_z flattened head-major, `x = [z_0, ..., z_{H-1}]` with `z_h` of width
`d_head`. Encoder and decoder are block-diagonal: head h's slice of the input is encoded
only into head h's `m = d_sae / H` features `[h*m, (h+1)*m)` and decoded only from them,
so every feature belongs to exactly one head and the SAE has ~1/H of the parameters and
FLOPs of a dense SAE of the same size. The blocks are stored as `W_enc_blocks
[H, d_head, m]` and `W_dec_blocks [H, m, d_head]` and applied with batched matmuls; the
2-D `W_enc [d_in, d_sae]` / `W_dec [d_sae, d_in]` exist as read-only dense views for tools
that expect them (writing into them changes nothing), and `to_dense_sae()` gives an
exact `StandardSAE` copy for tools that need real dense parameters.

Activations: "relu" (trained with SAELens's standard L1 penalty weighted by decoder row
norms) or "topk" (k features per head, SAELens's `TopK` applied to each head's block).
With "topk", training steps, `forward` and `encode` run the sparse per-head TopK of
`per_head_topk.py` (a gather of k decoder rows per head, gradients only through the
selected entries) whenever no hook is attached to `hook_sae_acts_pre` or
`hook_sae_acts_post`; with such a hook they run the dense path, so the hook sees and may
change the dense `[..., d_sae]` tensors exactly as before. `decode` of a dense tensor is
always the block matmul (it may hold any number of non-zeros).

Initialisation, per block: decoder rows drawn as SAELens draws its dense decoder
(kaiming-uniform) and scaled to unit norm, or to `decoder_init_norm` (SAELens's training
default 0.1) when training; the encoder starts as the decoder's transpose.

The classes are registered with SAELens by the plugin in `plugin.py` (through
`sae_lens_attn.plugins`), not by importing this module. Import them from the public
`sae_lens_attn.architectures.block_diagonal` (or `sae_lens_attn`), which explains why
they live here.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import (
    SAE,
    SAEConfig,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainingSAEConfig,
    TrainStepInput,
    TrainStepOutput,
)
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopK
from torch import nn
from typing_extensions import override

from sae_lens_attn.architectures._read_only import read_only_view
from sae_lens_attn.architectures.block_ops import block_diagonal_dense, block_diagonal_matmul
from sae_lens_attn.architectures.per_head_aux import (
    aux_k,
    dead_pre_aux_loss,
    per_head_topk_aux_loss,
)
from sae_lens_attn.architectures.per_head_topk import (
    ChunkedEncoding,
    PerHeadTopKCode,
    per_head_topk_decode,
    per_head_topk_encode,
    per_head_topk_encode_chunked,
)
from sae_lens_attn.architectures.relu_decode import relu_decode
from sae_lens_attn.architectures.sparse_relu import sparse_pays, sparse_relu_decode

ARCHITECTURE = "block_diagonal"
ACTIVATIONS = ("relu", "topk")
# Runtime input normalisations that act on a whole token vector: input scaling cannot be
# folded through them.
_RUNTIME_NORMALIZATIONS = ("constant_norm_rescale", "layer_norm")


@dataclass(kw_only=True)
class _BlockDiagonalFields:
    """Fields and checks shared by the inference and the training config.

    Args:
        n_heads (int): Number of heads (blocks); `d_in` and `d_sae` must be multiples.
        activation ("relu" | "topk"): ReLU, or TopK inside each head's block.
        k (int | None): Features kept per head and token with "topk" (1..d_sae_per_head);
            must be None with "relu".
    """

    n_heads: int
    activation: Literal["relu", "topk"] = "relu"
    k: int | None = None

    @property
    def d_head(self) -> int:
        """Input width of one head: `d_in // n_heads`."""
        return self.d_in // self.n_heads  # type: ignore[attr-defined]

    @property
    def d_sae_per_head(self) -> int:
        """Features per head, `m = d_sae // n_heads`; head h owns `[h*m, (h+1)*m)`."""
        return self.d_sae // self.n_heads  # type: ignore[attr-defined]

    def __post_init__(self) -> None:
        _ensure_registered()  # TrainingSAEConfig.__post_init__ looks us up in SAELens's registry
        super().__post_init__()  # type: ignore[misc]
        _check_block_diagonal_config(self)
        self._check_activation()

    def _check_activation(self) -> None:
        """The activation and its fields; the per-head siblings (`block_diagonal_batchtopk`,
        `block_diagonal_jumprelu`) override this."""
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.activation == "topk":
            if self.k is None or not 1 <= self.k <= self.d_sae_per_head:
                raise ValueError(
                    f"activation='topk' needs k (features per head) between 1 and "
                    f"d_sae_per_head={self.d_sae_per_head}, got k={self.k}"
                )
        elif self.k is not None:
            raise ValueError(
                f"k={self.k} is only used with activation='topk'; leave k=None for activation='relu'"
            )


def _ensure_registered() -> None:
    """Register through the plugin system if SAELens's import hook did not run (Python
    started with -S/-I, or SAE_LENS_ATTN_NO_AUTOLOAD=1). Idempotent."""
    if ARCHITECTURE not in SAE_CLASS_REGISTRY or ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
        from sae_lens_attn.plugins import register_architectures_with_sae_lens

        register_architectures_with_sae_lens()


def _check_block_diagonal_config(cfg: Any) -> None:
    if not isinstance(cfg.n_heads, int) or cfg.n_heads < 1:
        raise ValueError(f"n_heads must be a positive integer, got {cfg.n_heads!r}")
    for name in ("d_in", "d_sae"):
        size = getattr(cfg, name)
        if size % cfg.n_heads:
            raise ValueError(
                f"{name}={size} is not divisible by n_heads={cfg.n_heads}; nearest valid: "
                f"{_nearest_multiples(size, cfg.n_heads)}"
            )
    if cfg.normalize_activations == "covariance_whitening":
        raise ValueError(
            "normalize_activations='covariance_whitening' mixes heads, so the SAE would no "
            "longer be block-diagonal; use 'none' or 'expected_average_only_in' (per-head "
            "scales can be folded in with fold_input_scaling)"
        )


def _is_hooked(hook_point: nn.Module) -> bool:
    return bool(
        hook_point._forward_hooks or hook_point._forward_pre_hooks or hook_point._backward_hooks
    )


def _nearest_multiples(size: int, n: int) -> str:
    below = size // n * n
    return f"{below} or {below + n}" if below else str(n)


@dataclass(kw_only=True)
class BlockDiagonalSAEConfig(_BlockDiagonalFields, SAEConfig):
    """Configuration of a `BlockDiagonalSAE` (see `_BlockDiagonalFields` for the fields)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


@dataclass(kw_only=True)
class BlockDiagonalTrainingSAEConfig(_BlockDiagonalFields, TrainingSAEConfig):
    """Configuration for training a `BlockDiagonalTrainingSAE`.

    Args:
        l1_coefficient, lp_norm, l1_warm_up_steps: the "relu" sparsity penalty, as in
            SAELens's `StandardTrainingSAEConfig`.
        aux_loss_coefficient (float): weight of the "topk" auxiliary loss for dead
            features, as in SAELens's `TopKTrainingSAEConfig`.
        decoder_init_norm (float | None): initial decoder row norm; None means 1.
    """

    l1_coefficient: float = 1.0
    lp_norm: float = 1.0
    l1_warm_up_steps: int = 0
    aux_loss_coefficient: float = 1.0

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class PerHeadTopK(nn.Module):
    """SAELens's `TopK` applied inside each head's block of `[..., n_heads * m]` features."""

    def __init__(self, n_heads: int, k: int):
        super().__init__()
        self.n_heads = n_heads
        self.topk = TopK(k)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.topk(x.unflatten(-1, (self.n_heads, -1))).flatten(-2)


class _BlockDiagonalMixin:
    """What the inference and training classes share: block weights, their dense views,
    the encoder/decoder products and every SAELens method that assumes 2-D weights.

    Listed before the SAELens base class, so these methods override the base ones.
    """

    cfg: BlockDiagonalSAEConfig | BlockDiagonalTrainingSAEConfig
    W_enc_blocks: nn.Parameter  # [n_heads, d_head, d_sae_per_head]
    W_dec_blocks: nn.Parameter  # [n_heads, d_sae_per_head, d_head]
    b_enc: nn.Parameter  # [d_sae]
    b_dec: nn.Parameter  # [d_in]

    @property
    def W_enc(self) -> torch.Tensor:
        """Dense `[d_in, d_sae]` block-diagonal encoder, built on each access; writes into
        it raise (they would change nothing): write `W_enc_blocks`."""
        return read_only_view(block_diagonal_dense(self.W_enc_blocks), "W_enc_blocks")

    @property
    def W_dec(self) -> torch.Tensor:
        """Dense `[d_sae, d_in]` block-diagonal decoder, built on each access; writes into
        it raise (they would change nothing): write `W_dec_blocks`."""
        return read_only_view(block_diagonal_dense(self.W_dec_blocks), "W_dec_blocks")

    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.cfg.activation == "topk":
            return PerHeadTopK(self.cfg.n_heads, self.cfg.k)  # type: ignore[arg-type]
        return nn.ReLU()

    def _encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`x [..., d_in]` (or `[..., n_heads, d_head]` in hook_z mode) -> feature acts and
        pre-activations, both `[..., d_sae]`."""
        sae_in = self.process_sae_in(x)  # type: ignore[attr-defined]
        # add_ in place: the fresh product is ours, and [batch, d_sae] allocations are
        # a large share of a CPU training step.
        pre = block_diagonal_matmul(sae_in, self.W_enc_blocks).add_(self.b_enc)
        hidden_pre = self.hook_sae_acts_pre(pre)  # type: ignore[attr-defined]
        feature_acts = self.hook_sae_acts_post(self.activation_fn(hidden_pre))  # type: ignore[attr-defined]
        return feature_acts, hidden_pre

    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """`[..., d_sae]` feature acts -> reconstruction `[..., d_in]` (`[..., n_heads,
        d_head]` in hook_z mode)."""
        return self._finish_decode(block_diagonal_matmul(feature_acts, self.W_dec_blocks))

    def _finish_decode(self, sae_out_pre: torch.Tensor) -> torch.Tensor:
        """`b_dec` and SAELens's output steps on the decoded `[..., d_in]`."""
        sae_out_pre = self.hook_sae_recons(sae_out_pre + self.b_dec)  # type: ignore[attr-defined]
        sae_out_pre = self.run_time_activation_norm_fn_out(sae_out_pre)  # type: ignore[attr-defined]
        return self.reshape_fn_out(sae_out_pre, self.d_head)  # type: ignore[attr-defined]

    def _topk_code_usable(self) -> bool:
        """True for activation="topk" when no hook is attached to the acts hook points
        (a hook there must see, and may change, the dense tensors)."""
        return self.cfg.activation == "topk" and not (
            _is_hooked(self.hook_sae_acts_pre) or _is_hooked(self.hook_sae_acts_post)  # type: ignore[attr-defined]
        )

    def _encode_topk_code(
        self, x: torch.Tensor, dead: torch.Tensor | None = None
    ) -> ChunkedEncoding:
        """`x` -> its sparse per-head TopK code, a chunk of rows at a time (no dense
        `[..., d_sae]` pre-activations); with `dead [d_sae]` also each head's top dead
        pre-activations, as many as the auxiliary loss reads."""
        sae_in = self.process_sae_in(x)  # type: ignore[attr-defined]
        k_dead = 0 if dead is None else aux_k(dead, self.cfg.n_heads, self.cfg.d_head)
        k: int = self.cfg.k  # type: ignore[assignment]
        return per_head_topk_encode_chunked(sae_in, self.W_enc_blocks, self.b_enc, k, dead, k_dead)

    def _decode_topk_code(self, code: PerHeadTopKCode) -> torch.Tensor:
        """Reconstruction from a code: k decoder rows per head, then as `decode`."""
        return self._finish_decode(per_head_topk_decode(code, self.W_dec_blocks))

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """As SAELens's `forward`; with the per-head TopK code when it is usable (and no
        error term is asked for: that recomputation runs SAELens's own path)."""
        if not self._topk_code_usable() or self.use_error_term:  # type: ignore[attr-defined]
            return super().forward(x)  # type: ignore[misc]
        sae_out = self._decode_topk_code(self._encode_topk_code(x).code)
        return self.hook_sae_output(sae_out)  # type: ignore[attr-defined]

    def _decoder_row_norms(self) -> torch.Tensor:
        """`[d_sae]` L2 norms of the decoder rows (differentiable)."""
        return self.W_dec_blocks.norm(dim=-1).flatten()

    @torch.no_grad()
    def get_W_dec_norm(self) -> torch.Tensor:
        return self._decoder_row_norms().clamp(min=1e-8)

    @torch.no_grad()
    def fold_and_get_W_dec_norm(self) -> torch.Tensor:
        """Scale decoder rows to unit norm and the matching encoder columns and `b_enc`
        up, in place: the SAE computes the same reconstruction."""
        norms = self.get_W_dec_norm()
        n_heads, per_head = self.cfg.n_heads, self.cfg.d_sae_per_head
        self.W_dec_blocks.data.div_(norms.view(n_heads, per_head, 1))
        self.W_enc_blocks.data.mul_(norms.view(n_heads, 1, per_head))
        self.b_enc.data.mul_(norms)
        return norms

    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        if self.cfg.activation == "topk":
            raise NotImplementedError(
                "folding W_dec norms would change which k features win in each head of a "
                "topk block-diagonal SAE; fold only activation='relu' SAEs"
            )
        self.fold_and_get_W_dec_norm()

    @torch.no_grad()
    def fold_input_scaling(self, scale: torch.Tensor) -> None:
        """Fold an input scaling `[d_in]` into the weights, in place.

        Before, the SAE was fed `x * scale` (for instance per-head factors `sqrt(d_head) /
        mean ||z_h||`); afterwards it takes the raw `x`, gives the same feature acts, and
        reconstructs raw `x` (the old reconstruction divided by `scale`).
        """
        d_in, n_heads, d_head = self.cfg.d_in, self.cfg.n_heads, self.cfg.d_head
        scale = torch.as_tensor(scale)
        if scale.shape != (d_in,):
            raise ValueError(f"scale must have shape [{d_in}] (d_in), got {list(scale.shape)}")
        if not (torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("scale must be finite and positive everywhere")
        if self.cfg.normalize_activations in _RUNTIME_NORMALIZATIONS:
            raise ValueError(
                f"cannot fold an input scaling through normalize_activations="
                f"{self.cfg.normalize_activations!r}, which rescales each token at run time"
            )
        scale = scale.to(self.b_dec.device, torch.promote_types(scale.dtype, self.b_dec.dtype))
        per_head = scale.view(n_heads, d_head)
        self._scale_in_place(self.W_enc_blocks, per_head.unsqueeze(-1), multiply=True)
        self._scale_in_place(self.W_dec_blocks, per_head.unsqueeze(1), multiply=False)
        self._scale_in_place(self.b_dec, scale, multiply=False)

    @staticmethod
    def _scale_in_place(param: nn.Parameter, factor: torch.Tensor, multiply: bool) -> None:
        # computed in the factor's (at least float32) precision, stored in the param's dtype
        value = param.data.to(factor.dtype)
        param.data.copy_(value * factor if multiply else value / factor)

    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        """SAELens's folding of `expected_average_only_in`: one factor for every input."""
        self.fold_input_scaling(torch.full((self.cfg.d_in,), float(scaling_factor)))
        self.cfg.normalize_activations = "none"

    def fold_activation_whitening(
        self,
        mean: torch.Tensor,
        whitening_matrix: torch.Tensor,
        unwhitening_matrix: torch.Tensor,
    ) -> None:
        """Refused: a whitening matrix mixes heads, so `M @ W_enc` is not block-diagonal."""
        raise ValueError(
            "a block-diagonal SAE cannot absorb covariance whitening: the whitening matrix "
            "mixes heads, so M @ W_enc is no longer block-diagonal. Train with "
            "normalize_activations='none' or 'expected_average_only_in', or fold per-head "
            "scales with fold_input_scaling"
        )

    def _dense_sae_classes(self) -> tuple[type[SAE[Any]], type[SAEConfig]]:
        """The dense SAELens classes `to_dense_sae` builds (JumpReLU for the per-head
        JumpReLU family)."""
        return StandardSAE, StandardSAEConfig

    def _dense_extra_state(self) -> dict[str, torch.Tensor]:
        """Parameters besides the weights and biases the dense copy takes over."""
        return {}

    @torch.no_grad()
    def to_dense_sae(self) -> SAE[Any]:
        """An exact dense SAELens copy (a `StandardSAE`, or the class `_dense_sae_classes`
        names: zeros off the blocks, same biases, config and a deep copy of the
        metadata), for sae_dashboard and other dense-only tools.

        With activation="topk" the copy's `activation_fn` is this SAE's per-head TopK, so
        it computes the same function in memory; saved to disk, it would load as ReLU.
        """
        cfg = self.cfg
        dense_class, dense_config_class = self._dense_sae_classes()
        dense_cfg = dense_config_class(
            d_in=cfg.d_in,
            d_sae=cfg.d_sae,
            dtype=cfg.dtype,
            device="meta",  # no throw-away initialisation; weights are assigned below
            apply_b_dec_to_input=cfg.apply_b_dec_to_input,
            normalize_activations=cfg.normalize_activations,
            reshape_activations=cfg.reshape_activations,
            metadata=copy.deepcopy(cfg.metadata),
        )
        dense = dense_class(dense_cfg)
        dense.load_state_dict(
            {
                "W_enc": self.W_enc.clone(),
                "W_dec": self.W_dec.clone(),
                "b_enc": self.b_enc.detach().clone(),
                "b_dec": self.b_dec.detach().clone(),
                **self._dense_extra_state(),
            },
            assign=True,
        )
        dense = dense.to(device=self.b_dec.device, dtype=self.b_dec.dtype)
        if not self.hook_z_reshaping_mode:  # type: ignore[attr-defined]
            dense.turn_off_forward_pass_hook_z_reshaping()
        if cfg.activation == "topk":
            dense.activation_fn = self.activation_fn  # type: ignore[attr-defined]
        return dense


def _init_weights_block_diagonal(
    sae: BlockDiagonalSAE | BlockDiagonalTrainingSAE, decoder_row_norm: float
) -> None:
    cfg = sae.cfg
    w_dec = torch.empty(
        cfg.n_heads, cfg.d_sae_per_head, cfg.d_head, dtype=sae.dtype, device=sae.device
    )
    nn.init.kaiming_uniform_(w_dec)
    with torch.no_grad():
        w_dec *= decoder_row_norm / w_dec.norm(dim=-1, keepdim=True)
    sae.W_dec_blocks = nn.Parameter(w_dec)
    sae.W_enc_blocks = nn.Parameter(w_dec.transpose(1, 2).clone().contiguous())
    sae.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=sae.dtype, device=sae.device))
    sae.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=sae.dtype, device=sae.device))


@torch.compiler.disable  # Dynamo cannot build sparse tensors: run this part eagerly
def _sparse_coo(code: PerHeadTopKCode, d_sae_per_head: int) -> torch.Tensor:
    """The code as a detached sparse COO tensor `[..., d_sae]` (one entry per selected
    feature, zeros from the ReLU included)."""
    values, indices = code.values.detach(), code.indices
    *lead, n_heads, k = values.shape
    features = (
        indices + torch.arange(n_heads, device=values.device).view(n_heads, 1) * d_sae_per_head
    )
    coordinates = features.reshape(1, -1)
    if lead:
        tokens = torch.arange(math.prod(lead), device=values.device).repeat_interleave(n_heads * k)
        coordinates = torch.cat(
            [torch.stack(torch.unravel_index(tokens, tuple(lead))), coordinates]
        )
    shape = (*lead, n_heads * d_sae_per_head)
    return torch.sparse_coo_tensor(coordinates, values.reshape(-1), shape, check_invariants=False)


class BlockDiagonalSAE(_BlockDiagonalMixin, SAE[BlockDiagonalSAEConfig]):
    """Inference block-diagonal SAE: one block of `d_sae / n_heads` features per head.

    It implements:

      - initialize_weights: unit-norm decoder rows per block, encoder = decoder transpose.
      - encode: `process_sae_in`, then a batched matmul over heads, `b_enc`, activation.
      - decode: a batched matmul over heads plus `b_dec`, then SAELens's output hooks.

    plus `W_enc`/`W_dec` dense views, `to_dense_sae()`, `fold_input_scaling(scale)` and
    SAELens's folding methods rewritten for block weights.
    """

    @override
    def initialize_weights(self) -> None:
        _init_weights_block_diagonal(self, decoder_row_norm=1.0)

    @override
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self._topk_code_usable():
            return self._encode_topk_code(x).code.to_dense(self.cfg.d_sae_per_head)
        return self._encode_with_hidden_pre(x)[0]


class BlockDiagonalTrainingSAE(_BlockDiagonalMixin, TrainingSAE[BlockDiagonalTrainingSAEConfig]):
    """Training block-diagonal SAE for SAELens's trainer and runner.

    It implements:

      - initialize_weights: decoder rows of norm `decoder_init_norm` (1 if None) per
        block, encoder = decoder transpose.
      - encode_with_hidden_pre: as `BlockDiagonalSAE.encode`, also returning pre-acts.
      - calculate_aux_loss: "relu": SAELens's standard L1 penalty on feature acts
        weighted by decoder row norms; "topk": SAELens's auxiliary loss for dead
        features, per head (in each head, its top `d_head // 2` dead pre-activations
        reconstruct the head's residual; `per_head_aux`).
    """

    @override
    def initialize_weights(self) -> None:
        norm = self.cfg.decoder_init_norm
        _init_weights_block_diagonal(self, decoder_row_norm=1.0 if norm is None else norm)

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        if self.cfg.activation == "topk":
            return {}
        return {
            "l1": TrainCoefficientConfig(
                value=self.cfg.l1_coefficient, warm_up_steps=self.cfg.l1_warm_up_steps
            )
        }

    # Set only during `training_forward_pass`, for the feature acts it made (weakref):
    # their token sum (relu, L1) and their reconstruction before `b_dec` (relu fused
    # step), or their per-head TopK code.
    _acts_token_sum: tuple[weakref.ref[torch.Tensor], torch.Tensor] | None = None
    _decoded: tuple[weakref.ref[torch.Tensor], torch.Tensor] | None = None
    _topk_code: tuple[weakref.ref[torch.Tensor], PerHeadTopKCode] | None = None
    # and, for the TopK auxiliary loss, the dead features of the step and each head's top
    # dead pre-activations, keyed by the `hidden_pre` returned with them
    _aux_dead: torch.Tensor | None = None
    _dead_pre: tuple[weakref.ref[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    _in_training_forward_pass = False

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        """SAELens's training pass. With the per-head TopK code, `feature_acts` in the
        output is a detached sparse COO tensor (as SAELens's TopK with
        `use_sparse_activations`; its trainer counts firings on it) and the reconstruction
        is decoded from the code, and `hidden_pre` is a detached sparse COO tensor of the
        pre-activations at the code's entries alone (SAELens's trainer does not read it;
        the auxiliary loss gets the dead pre-activations it needs from the same chunked
        encode). With ReLU and the L1 term (lp_norm 1), ReLU, decoder and the L1 token
        sum run as one autograd node (`relu_decode`)."""
        self._in_training_forward_pass = True
        dead = step_input.dead_neuron_mask
        self._aux_dead = dead if dead is not None and bool(dead.any()) else None
        try:
            return super().training_forward_pass(step_input)
        finally:  # nothing of the graph outlives the pass (deepcopy, memory)
            self._in_training_forward_pass = False
            self._acts_token_sum = self._decoded = self._topk_code = None
            self._dead_pre = self._aux_dead = None

    @override
    def encode_with_hidden_pre(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._acts_token_sum = self._decoded = self._topk_code = None
        if self._topk_code_usable():
            if not self._in_training_forward_pass:  # the caller may read the dense pre-activations
                sae_in = self.process_sae_in(x)
                k: int = self.cfg.k  # type: ignore[assignment]
                hidden_pre, code = per_head_topk_encode(sae_in, self.W_enc_blocks, self.b_enc, k)
                return code.to_dense(self.cfg.d_sae_per_head), hidden_pre
            return self._encode_topk_training(x)
        if self._in_training_forward_pass and self._uses_token_sum_l1() and torch.is_grad_enabled():
            if not _is_hooked(self.hook_sae_acts_post):
                return self._encode_relu_decode(x)
        feature_acts, hidden_pre = self._encode_with_hidden_pre(x)
        if (
            self._in_training_forward_pass
            and self._uses_token_sum_l1()
            and feature_acts.requires_grad
        ):
            # The L1 term needs the acts summed over tokens. Summing here, before
            # `decode` builds its graph node, makes autograd run the decoder's backward
            # first, so the L1 gradient (a broadcast) is added in place into the
            # decoder's fresh [batch, d_sae] gradient: without it the engine allocates
            # the sum out of place (about 10% of a CPU step at gpt2-small's shape).
            token_sum = feature_acts.reshape(-1, self.cfg.d_sae).sum(0)
            self._acts_token_sum = (weakref.ref(feature_acts), token_sum)
        return feature_acts, hidden_pre

    def _encode_topk_training(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training pass's sparse TopK encode: feature acts and `hidden_pre` as sparse
        COO tensors (`training_forward_pass`), the code and the dead pre-activations
        stashed for `decode` and the auxiliary loss."""
        encoding = self._encode_topk_code(x, self._aux_dead)
        feature_acts = _sparse_coo(encoding.code, self.cfg.d_sae_per_head)
        selected = PerHeadTopKCode(encoding.selected_pre, encoding.code.indices)
        hidden_pre = _sparse_coo(selected, self.cfg.d_sae_per_head)
        self._topk_code = (weakref.ref(feature_acts), encoding.code)
        if encoding.dead is not None:
            self._dead_pre = (weakref.ref(hidden_pre), encoding.dead)
        return feature_acts, hidden_pre

    def _encode_relu_decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training pass's ReLU step as one node: acts, their reconstruction and
        their token sum, stashed for `decode` and the L1 term. At low density (and no
        hook on the pre-activations) it runs on the non-zero acts alone (`sparse_relu`)."""
        sae_in = self.process_sae_in(x)
        pre = block_diagonal_matmul(sae_in, self.W_enc_blocks).add_(self.b_enc)
        hidden_pre = self.hook_sae_acts_pre(pre)
        if not _is_hooked(self.hook_sae_acts_pre) and sparse_pays(hidden_pre, self.cfg.d_sae):
            weights = (self.W_enc_blocks, self.b_enc, self.W_dec_blocks)
            feature_acts, decoded, token_sum = sparse_relu_decode(hidden_pre, sae_in, *weights)
        else:
            feature_acts, decoded, token_sum = relu_decode(hidden_pre, self.W_dec_blocks)
        self._acts_token_sum = (weakref.ref(feature_acts), token_sum)
        self._decoded = (weakref.ref(feature_acts), decoded)
        return feature_acts, hidden_pre

    @override
    def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """As the mixin's `decode`; the acts of this training pass are decoded from their
        per-head TopK code, or were decoded by the fused ReLU step."""
        code, self._topk_code = self._topk_code, None
        if code is not None and code[0]() is feature_acts:
            return self._decode_topk_code(code[1])
        decoded, self._decoded = self._decoded, None
        if decoded is not None and decoded[0]() is feature_acts:
            return self._finish_decode(decoded[1])
        return super().decode(feature_acts)

    def _uses_token_sum_l1(self) -> bool:
        return self.cfg.activation == "relu" and self.cfg.lp_norm == 1

    def _token_sum_of(self, feature_acts: torch.Tensor) -> torch.Tensor:
        """`[d_sae]` sum over tokens of `feature_acts`: the one `encode_with_hidden_pre`
        made for this very tensor (then forgotten), else computed now."""
        stash, self._acts_token_sum = self._acts_token_sum, None
        if stash is not None and stash[0]() is feature_acts:
            return stash[1]
        return feature_acts.reshape(-1, self.cfg.d_sae).sum(0)

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        if self.cfg.activation == "topk":
            return {
                "auxiliary_reconstruction_loss": self._topk_aux_loss(
                    step_input, sae_out, hidden_pre
                )
            }
        return {"l1_loss": self._l1_loss(step_input.coefficients["l1"], feature_acts)}

    def _l1_loss(self, coefficient: float, feature_acts: torch.Tensor) -> torch.Tensor:
        """SAELens's standard penalty: mean over tokens of `||acts * W_dec_norms||_p`."""
        norms = self._decoder_row_norms()
        if self._uses_token_sum_l1():
            # ReLU acts are >= 0, so the p=1 norm is the plain weighted sum. Summing over
            # tokens first gives the same value with a broadcast backward instead of
            # three [batch, d_sae] temporaries.
            n_tokens = feature_acts.numel() // self.cfg.d_sae
            return coefficient * (self._token_sum_of(feature_acts) @ norms) / n_tokens
        sparsity = (feature_acts * norms).norm(p=self.cfg.lp_norm, dim=-1)
        return (coefficient * sparsity).mean()

    def _topk_aux_loss(
        self, step_input: TrainStepInput, sae_out: torch.Tensor, hidden_pre: torch.Tensor
    ) -> torch.Tensor:
        """SAELens's TopK auxiliary loss (`TopKTrainingSAE.calculate_topk_aux_loss`) per
        head: `per_head_topk_aux_loss` on each head's block and residual slice."""
        dead = step_input.dead_neuron_mask
        if dead is None or not bool(dead.any()):
            return sae_out.new_tensor(0.0)
        if self.cfg.normalize_activations in _RUNTIME_NORMALIZATIONS:
            raise ValueError(
                "the topk auxiliary loss does not support normalize_activations="
                f"{self.cfg.normalize_activations!r}; use 'none' or 'expected_average_only_in'"
            )
        residual = (step_input.sae_in - sae_out).detach()
        stash, self._dead_pre = self._dead_pre, None
        if stash is not None and stash[0]() is hidden_pre:  # the chunked TopK encode took them
            aux_loss = dead_pre_aux_loss(*stash[1], dead, residual, self.W_dec_blocks)
        else:
            aux_loss = per_head_topk_aux_loss(hidden_pre, dead, residual, self.W_dec_blocks)
        return self.cfg.aux_loss_coefficient * aux_loss

    @override
    @torch.no_grad()
    def log_histograms(self) -> dict[str, NDArray[np.generic]]:
        return {
            "weights/W_dec_norms": self._decoder_row_norms().float().cpu().numpy(),
            "weights/b_e": self.b_enc.detach().float().cpu().numpy(),
        }
