"""Fold a per-dimension input scale into an SAE, so the saved SAE takes raw hook_z."""

from __future__ import annotations

from typing import Any

import torch
from sae_lens import SAE


@torch.no_grad()
def fold_input_scale(sae: SAE[Any], scale: torch.Tensor) -> None:
    """In place: afterwards `sae` takes raw `x [..., d_in]` where it took `x * scale`.

    An SAE that folds a diagonal scale itself (`fold_input_scaling`, as the block-diagonal
    SAE does, keeping its blocks) is asked to. Any other SAELens SAE folds it as the
    diagonal case of its own `fold_activation_whitening` (mean 0, `M = diag(scale)`),
    which already handles each architecture's details (TopK's decoder-norm rescaling,
    gated biases).
    """
    if scale.shape != (sae.cfg.d_in,):
        raise ValueError(f"scale must have shape [{sae.cfg.d_in}] (d_in), got {list(scale.shape)}")
    if hasattr(sae, "fold_input_scaling"):
        sae.fold_input_scaling(scale)
        return
    scale = scale.to(torch.float64)
    sae.fold_activation_whitening(
        mean=torch.zeros_like(scale),
        whitening_matrix=torch.diag(scale),
        unwhitening_matrix=torch.diag(1 / scale),
    )
