"""Per-head JumpReLU SAE on hook_z: SAELens architecture "block_diagonal_jumprelu".

The block-diagonal SAE of `_block_diagonal.py` (one block of `m = d_sae / n_heads`
features per head, block matmuls) with SAELens's JumpReLU instead of a ReLU: feature j
fires when its pre-activation exceeds its own learned `threshold[j]`, and then passes it
through. Training is SAELens's JumpReLU training (`sae_lens.saes.jumprelu_sae`): its
`JumpReLU` and `Step` autograd functions (rectangle straight-through estimator of width
`jumprelu_bandwidth`), its L0 penalty (`jumprelu_sparsity_loss_mode` "step", "tanh", or
"quadratic" around `target_l0`), its optional pre-activation loss for dead features, the
same config fields and defaults. Because the blocks are only a sparsity pattern of the
dense weights, the whole training step equals SAELens's `JumpReLUTrainingSAE` on the
masked dense matrix (tested); `target_l0` therefore counts the features of all heads
together, as SAELens's does for a dense SAE.

The per-head BatchTopK (`_block_diagonal_batchtopk.py`) saves itself as this inference
SAE, with each head's learned batch threshold as the threshold of its features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from sae_lens.saes.jumprelu_sae import (
    JumpReLU,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    JumpReLUTrainingSAEConfig,
    Step,
    _validate_jumprelu_config,
    calculate_pre_act_loss,
)
from sae_lens.saes.sae import (
    SAE,
    SAEConfig,
    TrainCoefficientConfig,
    TrainStepInput,
    TrainStepOutput,
)
from torch import nn
from typing_extensions import override

from sae_lens_attn.architectures._block_diagonal import (
    BlockDiagonalSAE,
    BlockDiagonalTrainingSAE,
    _BlockDiagonalFields,
)

ARCHITECTURE = "block_diagonal_jumprelu"
ACTIVATION = "jumprelu"


class _JumpReLUFields(_BlockDiagonalFields):
    """`activation` is always "jumprelu" and `k` unused (the thresholds set the sparsity)."""

    # fields of `_BlockDiagonalFields` with no meaning here: `train` offers no option for them
    unused_fields: ClassVar[frozenset[str]] = frozenset({"k"})

    @override
    def _check_activation(self) -> None:
        if self.activation != ACTIVATION or self.k is not None:
            raise ValueError(
                f"{ARCHITECTURE} has activation={ACTIVATION!r} and no k (its thresholds set the "
                f"sparsity), got activation={self.activation!r}, k={self.k!r}"
            )


@dataclass(kw_only=True)
class BlockDiagonalJumpReLUSAEConfig(_JumpReLUFields, SAEConfig):
    """Configuration of a `BlockDiagonalJumpReLUSAE` (`n_heads` as for `block_diagonal`)."""

    activation: str = ACTIVATION  # type: ignore[assignment]

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


@dataclass(kw_only=True)
class BlockDiagonalJumpReLUTrainingSAEConfig(_JumpReLUFields, JumpReLUTrainingSAEConfig):
    """Configuration for training a `BlockDiagonalJumpReLUTrainingSAE`: `n_heads`, and
    SAELens's `JumpReLUTrainingSAEConfig` fields with their meaning and defaults
    (`jumprelu_init_threshold`, `jumprelu_bandwidth`, `l0_coefficient`,
    `jumprelu_sparsity_loss_mode`, `target_l0` for "quadratic", ...)."""

    activation: str = ACTIVATION  # type: ignore[assignment]

    @override
    def _check_activation(self) -> None:
        super()._check_activation()
        _validate_jumprelu_config(self)  # SAELens checks these only when the SAE is built

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE


class _ThresholdMixin:
    """What both classes share: the threshold is folded with the decoder norms, and the
    dense copy is SAELens's `JumpReLUSAE`."""

    threshold: nn.Parameter  # [d_sae]

    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        """As SAELens's JumpReLU: pre-activations scale by the decoder norms, and so do the
        thresholds, so the same features fire."""
        norms = self.fold_and_get_W_dec_norm()  # type: ignore[attr-defined]
        self.threshold.data = self.threshold.data * norms.to(self.threshold.dtype)

    def _dense_sae_classes(self) -> tuple[type[SAE[Any]], type[SAEConfig]]:
        return JumpReLUSAE, JumpReLUSAEConfig

    def _dense_extra_state(self) -> dict[str, torch.Tensor]:
        return {"threshold": self.threshold.detach().clone()}


class BlockDiagonalJumpReLUSAE(_ThresholdMixin, BlockDiagonalSAE):
    """Inference per-head JumpReLU SAE: `acts = relu(pre) * (pre > threshold)`, with
    `pre` from the block-diagonal encoder (as SAELens's `JumpReLUSAE.encode`)."""

    cfg: BlockDiagonalJumpReLUSAEConfig  # type: ignore[assignment]

    @override
    def initialize_weights(self) -> None:
        super().initialize_weights()
        self.threshold = nn.Parameter(
            torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device)
        )

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self._jump_relu

    def _jump_relu(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        return hidden_pre.relu() * (hidden_pre > self.threshold).to(hidden_pre.dtype)


class BlockDiagonalJumpReLUTrainingSAE(_ThresholdMixin, BlockDiagonalTrainingSAE):
    """Training per-head JumpReLU SAE: SAELens's `JumpReLUTrainingSAE` on block weights.

    It implements:

      - a float32 `threshold [d_sae]` parameter from `jumprelu_init_threshold`, kept >= 0
        before each training step (as SAELens);
      - encode_with_hidden_pre: the block encoder, then SAELens's `JumpReLU` function;
      - calculate_aux_loss: SAELens's L0 penalty (its `Step` function) and optional
        pre-activation loss, with the decoder row norms of the blocks.
    """

    cfg: BlockDiagonalJumpReLUTrainingSAEConfig  # type: ignore[assignment]

    def __init__(self, cfg: BlockDiagonalJumpReLUTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self.bandwidth = cfg.jumprelu_bandwidth
        # float32 whatever the SAE dtype, as SAELens: Adam's small steps round away in bf16
        self.threshold = nn.Parameter(
            torch.full(
                (cfg.d_sae,), cfg.jumprelu_init_threshold, dtype=torch.float32, device=self.device
            )
        )

    @override
    def _apply(self, *args: Any, **kwargs: Any) -> BlockDiagonalJumpReLUTrainingSAE:
        out = super()._apply(*args, **kwargs)
        threshold = self._parameters.get("threshold")
        if threshold is not None and threshold.dtype != torch.float32:  # `.to(dtype)` casts it
            threshold.data = threshold.data.float()
        return out

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self._jump_relu

    def _jump_relu(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        return JumpReLU.apply(  # type: ignore[no-any-return]
            hidden_pre,
            self.threshold.to(hidden_pre.dtype),
            self.bandwidth,
            self.cfg.jumprelu_ste_to_input,
        )

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {
            "l0": TrainCoefficientConfig(
                value=self.cfg.l0_coefficient, warm_up_steps=self.cfg.l0_warm_up_steps
            )
        }

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        with torch.no_grad():  # SAELens's projection: a negative threshold passes negative acts
            self.threshold.data.clamp_(min=0.0)
        return super().training_forward_pass(step_input)

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """SAELens's `JumpReLUTrainingSAE.calculate_aux_loss` with block decoder norms."""
        cfg = self.cfg
        threshold = self.threshold.to(hidden_pre.dtype)
        W_dec_norm = self._decoder_row_norms()
        if cfg.jumprelu_sparsity_loss_mode == "tanh":
            per_item = torch.tanh(cfg.jumprelu_tanh_scale * feature_acts * W_dec_norm).sum(dim=-1)
        else:
            l0 = Step.apply(hidden_pre, threshold, self.bandwidth, cfg.jumprelu_ste_to_input).sum(
                dim=-1
            )  # type: ignore[union-attr]
            if cfg.jumprelu_sparsity_loss_mode == "quadratic":
                per_item = 2 / cfg.target_l0 * (l0 - cfg.target_l0) ** 2  # type: ignore[operator]
            else:
                per_item = l0
        losses = {"l0_loss": (step_input.coefficients["l0"] * per_item).mean()}
        if cfg.pre_act_loss_coefficient is not None:
            losses["pre_act_loss"] = calculate_pre_act_loss(
                cfg.pre_act_loss_coefficient,
                threshold,
                hidden_pre,
                step_input.dead_neuron_mask,
                W_dec_norm,
            )
        return losses
