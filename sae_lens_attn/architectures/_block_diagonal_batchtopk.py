"""Per-head BatchTopK SAE on hook_z: SAELens architecture "block_diagonal_batchtopk".

The block-diagonal SAE of `_block_diagonal.py` trained with SAELens's BatchTopK
(`sae_lens.saes.batchtopk_sae`) inside each head's block: in a batch of N tokens, head h
keeps the `int(k * N)` largest ReLU'd pre-activations of its block `[N, m]`, wherever they
fall among its tokens. So `k` is the mean number of active features per head and token
(total L0 `k * n_heads`), as `--k` is per head for `block_diagonal`; a head's L0 varies
from token to token. The dead-feature auxiliary loss is the per-head TopK's (SAELens's
TopK auxiliary loss decoded block by block).

Each head keeps its own running threshold, SAELens's rule applied per head: after each
step `threshold_h <- (1 - topk_threshold_lr) * threshold_h + topk_threshold_lr * (the
smallest positive activation head h kept)`. As SAELens's BatchTopK saves itself as a
JumpReLU, this one saves itself as a per-head JumpReLU (`block_diagonal_jumprelu`) whose
features in head h all have threshold `threshold_h`: the saved SAE encodes each token on
its own, `relu(pre) * (pre > threshold_h)`, with no batch and no fixed per-token L0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAEConfig
from sae_lens.saes.sae import SAEConfig, TrainCoefficientConfig, TrainStepInput, TrainStepOutput
from torch import nn
from typing_extensions import override

from sae_lens_attn.architectures._block_diagonal import (
    BlockDiagonalTrainingSAE,
    _BlockDiagonalFields,
)
from sae_lens_attn.architectures._block_diagonal_jumprelu import (
    ACTIVATION as SAVED_ACTIVATION,
)
from sae_lens_attn.architectures._block_diagonal_jumprelu import (
    BlockDiagonalJumpReLUSAEConfig,
)

ARCHITECTURE = "block_diagonal_batchtopk"
ACTIVATION = "batchtopk"


class PerHeadBatchTopK(nn.Module):
    """SAELens's `BatchTopK` applied to each head's block of `[..., n_heads * m]` acts
    separately: head h keeps the `int(k * n_tokens)` largest ReLU'd values of its block
    over all tokens. One `topk` over `[n_heads, n_tokens * m]`."""

    def __init__(self, n_heads: int, k: float):
        super().__init__()
        self.n_heads = n_heads
        self.k = k

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts = x.relu()
        n_tokens = acts.shape[:-1].numel()
        blocks = acts.reshape(n_tokens, self.n_heads, -1).transpose(0, 1)  # [H, N, m]
        per_head = blocks.reshape(self.n_heads, -1)  # [H, N * m]
        top = per_head.topk(int(self.k * n_tokens), dim=-1, sorted=False)
        kept = torch.zeros_like(per_head).scatter(-1, top.indices, top.values)
        return kept.view_as(blocks).transpose(0, 1).reshape(acts.shape)


@dataclass(kw_only=True)
class BlockDiagonalBatchTopKTrainingSAEConfig(_BlockDiagonalFields, BatchTopKTrainingSAEConfig):
    """Configuration for training a `BlockDiagonalBatchTopKTrainingSAE`.

    Args:
        n_heads (int): heads (blocks), as for `block_diagonal`.
        k (float): mean active features per head and token, in (0, d_sae_per_head].
        topk_threshold_lr (float): SAELens's rate of the running threshold (per head here).
        aux_loss_coefficient (float): weight of SAELens's TopK auxiliary loss.
    """

    activation: str = ACTIVATION  # type: ignore[assignment]
    k: float | None = None  # type: ignore[assignment]
    rescale_acts_by_decoder_norm: bool = False

    @override
    def _check_activation(self) -> None:
        if self.activation != ACTIVATION:
            raise ValueError(
                f"{ARCHITECTURE} has activation={ACTIVATION!r}, got {self.activation!r}"
            )
        if self.k is None or not 0 < self.k <= self.d_sae_per_head:
            raise ValueError(
                f"{ARCHITECTURE} needs k (mean active features per head and token) in "
                f"(0, d_sae_per_head={self.d_sae_per_head}], got k={self.k}"
            )
        if self.rescale_acts_by_decoder_norm or self.use_sparse_activations:
            raise ValueError(
                f"{ARCHITECTURE} supports neither rescale_acts_by_decoder_norm nor "
                "use_sparse_activations; leave both False"
            )

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        return BlockDiagonalJumpReLUSAEConfig

    @override
    def get_inference_sae_cfg_dict(self) -> dict[str, Any]:
        """The saved per-head JumpReLU's config: its thresholds replace `k` (which stays in
        the metadata's `training_architecture_details`)."""
        saved = super().get_inference_sae_cfg_dict()
        saved["metadata"]["training_architecture_details"]["k"] = self.k
        return {**saved, "activation": SAVED_ACTIVATION, "k": None}


class BlockDiagonalBatchTopKTrainingSAE(BlockDiagonalTrainingSAE):
    """Training per-head BatchTopK SAE; saves as a `BlockDiagonalJumpReLUSAE`.

    It implements:

      - activation: `PerHeadBatchTopK` (the batch's top `k * N` of each head's block);
      - `topk_threshold [n_heads]` (float64 buffer), updated after every training step;
      - calculate_aux_loss: SAELens's TopK auxiliary loss for dead features, per block;
      - process_state_dict_for_saving_inference: `threshold [d_sae]` from the head
        thresholds.
    """

    cfg: BlockDiagonalBatchTopKTrainingSAEConfig  # type: ignore[assignment]
    topk_threshold: torch.Tensor

    def __init__(self, cfg: BlockDiagonalBatchTopKTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        # float64 as SAELens's: the running update underflows in lower precisions
        self.register_buffer(
            "topk_threshold", torch.zeros(cfg.n_heads, dtype=torch.double, device=self.device)
        )

    @override
    def _apply(self, *args: Any, **kwargs: Any) -> BlockDiagonalBatchTopKTrainingSAE:
        out = super()._apply(*args, **kwargs)
        # `.to(dtype)` (loading a checkpoint calls it) casts buffers too: keep float64
        self.topk_threshold = self.topk_threshold.double()
        return out

    @override
    def get_activation_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return PerHeadBatchTopK(self.cfg.n_heads, self.cfg.k)  # type: ignore[arg-type]

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {}

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        output = super().training_forward_pass(step_input)
        self.update_topk_threshold(output.feature_acts)
        output.metrics["topk_threshold"] = self.topk_threshold.mean()
        return output

    @torch.no_grad()
    def update_topk_threshold(self, acts: torch.Tensor) -> None:
        """SAELens's `BatchTopKTrainingSAE.update_topk_threshold`, per head: `acts [...,
        d_sae]`; a head with no positive activation keeps its threshold."""
        blocks = acts.detach().reshape(-1, self.cfg.n_heads, self.cfg.d_sae_per_head)
        positive = blocks.masked_fill(blocks <= 0, torch.inf)
        smallest = positive.amin(dim=(0, 2)).to(self.topk_threshold.dtype)  # [H]
        lr = self.cfg.topk_threshold_lr
        updated = (1 - lr) * self.topk_threshold + lr * smallest
        self.topk_threshold = torch.where(smallest.isfinite(), updated, self.topk_threshold)

    @override
    def calculate_aux_loss(
        self,
        step_input: TrainStepInput,
        feature_acts: torch.Tensor,
        hidden_pre: torch.Tensor,
        sae_out: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        return {
            "auxiliary_reconstruction_loss": self._topk_aux_loss(step_input, sae_out, hidden_pre)
        }

    @torch.no_grad()
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError(
            "folding W_dec norms would change which features win each head's batch top-k; "
            "fold the saved per-head JumpReLU SAE instead (its thresholds are scaled with it)"
        )

    @override
    def process_state_dict_for_saving_inference(self, state_dict: dict[str, Any]) -> None:
        super().process_state_dict_for_saving_inference(state_dict)
        per_head = state_dict.pop("topk_threshold")
        state_dict["threshold"] = per_head.repeat_interleave(self.cfg.d_sae_per_head).to(
            self.b_enc.dtype
        )
