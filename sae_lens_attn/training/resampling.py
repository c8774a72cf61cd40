"""Resampling dead features while training, per head for block-diagonal SAEs.

After Bricken et al. 2023 ("Towards Monosemanticity", resampling dead neurons): every
`every_steps` steps, up to `last_step`, each feature that has not fired for SAELens's
`dead_feature_window` steps is moved to where the SAE reconstructs worst. For each such
feature a token of the current batch is drawn with probability proportional to its
squared reconstruction error (in the feature's own head for a block-diagonal SAE, the
whole input for a dense one); the feature's decoder row and encoder column become that
error's direction, scaled to the mean norms of the head's live features, its `b_enc` the
mean of theirs, and Adam's moments for those entries start again from zero. Unlike the
original (encoder at 0.2 of the live norm, `b_enc` 0), the new feature is as large as the
live ones, so that under TopK it can win a slot at all.

Why: at a high learning rate the live features' encoder norms and biases grow within tens
of steps and the rest never win a TopK slot again; the measurements are in
docs/initialisation.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

DEFAULT_STOP_SHARE = 0.8  # no resampling in the last 20% of training: the new features settle


@dataclass(frozen=True)
class DeadResampling:
    """Resample at every multiple of `every_steps` (1-based step numbers), up to and
    including `last_step`."""

    every_steps: int
    last_step: int

    def __post_init__(self) -> None:
        if self.every_steps < 1:
            raise ValueError(f"resampling needs every_steps >= 1, got {self.every_steps}")

    @classmethod
    def for_run(
        cls,
        every_tokens: int,
        batch_tokens: int,
        training_tokens: int,
        stop_share: float = DEFAULT_STOP_SHARE,
    ) -> DeadResampling:
        """Every `every_tokens` training tokens (rounded up to whole batches), until
        `stop_share` of the run's steps."""
        if every_tokens < 1:
            raise ValueError(f"resampling needs a positive token interval, got {every_tokens}")
        total_steps = training_tokens // batch_tokens
        return cls(math.ceil(every_tokens / batch_tokens), math.floor(stop_share * total_steps))

    def due(self, step: int) -> bool:
        return step % self.every_steps == 0 and step <= self.last_step


def unsupported_reason(sae: nn.Module) -> str | None:
    """Why `sae` cannot be resampled (None: it can): it needs a trainable encoder
    (`W_enc` or `W_enc_blocks`) and `b_enc`, which gated and matching-pursuit SAEs lack."""
    encoder = getattr(sae, "W_enc_blocks", getattr(sae, "W_enc", None))
    if isinstance(encoder, nn.Parameter) and isinstance(getattr(sae, "b_enc", None), nn.Parameter):
        return None
    return f"{type(sae).__name__} has no trainable encoder weight and b_enc to move"


KINDS = ("decoder", "encoder", "bias")  # what `_feature_tensors` returns, in order


def _feature_tensors(sae: nn.Module) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
    """`(decoder, encoder, b_enc)`: the parameters a feature owns a slice of."""
    if (reason := unsupported_reason(sae)) is not None:
        raise ValueError(f"dead-feature resampling: {reason}")
    if hasattr(sae, "W_dec_blocks"):
        return sae.W_dec_blocks, sae.W_enc_blocks, sae.b_enc
    return sae.W_dec, sae.W_enc, sae.b_enc


def _by_feature(tensor: torch.Tensor, n_groups: int, kind: str) -> torch.Tensor:
    """A view of a feature parameter (or its Adam moment) of `kind` (one of `KINDS`) with
    feature `f` of group `g` at `[g, f]`: `[G, m, w]` for the decoder and the (transposed)
    encoder, `[G, m]` for the bias. Block weights are `[G, ...]` already; a dense weight
    is its only group."""
    if kind == "bias":
        return tensor.view(n_groups, -1)
    grouped = tensor if tensor.ndim == 3 else tensor.unsqueeze(0)
    return grouped.transpose(1, 2) if kind == "encoder" else grouped


@torch.no_grad()
def resample_dead_features(
    sae: nn.Module,
    optimizer: torch.optim.Optimizer,
    dead: torch.Tensor,
    sae_in: torch.Tensor,
    generator: torch.Generator | None = None,
) -> int:
    """Move the `dead [d_sae]` features of `sae` onto the reconstruction error of `sae_in
    [batch, d_in]` (the trainer's scaled batch), in place, and reset their Adam moments.
    Returns how many features moved. A group whose features are all dead keeps norm 1
    rows and `b_enc` 0 (no live feature to match)."""
    if not bool(dead.any()):
        return 0
    params = _feature_tensors(sae)
    n_groups = params[0].shape[0] if params[0].ndim == 3 else 1
    dec, enc, bias = (
        _by_feature(param.data, n_groups, kind) for param, kind in zip(params, KINDS, strict=True)
    )
    width = dec.shape[-1]
    error = (sae_in - sae(sae_in)).reshape(-1, n_groups, width)  # [batch, G, w]
    dead_rows = dead.view(n_groups, -1)
    moved = []
    for group in range(n_groups):
        rows = dead_rows[group].nonzero().flatten()
        if len(rows) == 0:
            continue
        weights = error[:, group].square().sum(-1)
        if float(weights.sum()) <= 0:
            continue  # this group reconstructs the batch exactly: nowhere to aim
        tokens = torch.multinomial(
            weights, len(rows), replacement=len(rows) > int((weights > 0).sum()), generator=generator
        )
        directions = nn.functional.normalize(error[tokens, group], dim=-1)  # [n, w]
        live = ~dead_rows[group]
        any_live = bool(live.any())
        dec[group, rows] = directions * (dec[group][live].norm(dim=-1).mean() if any_live else 1.0)
        enc[group, rows] = directions * (enc[group][live].norm(dim=-1).mean() if any_live else 1.0)
        bias[group, rows] = bias[group][live].mean() if any_live else 0.0
        moved.append((group, rows))
    for param, kind in zip(params, KINDS, strict=True):  # Adam's moments of the moved entries restart
        state = optimizer.state.get(param, {})
        for moment in (state[key] for key in ("exp_avg", "exp_avg_sq") if key in state):
            for group, rows in moved:
                _by_feature(moment, n_groups, kind)[group, rows] = 0
    return sum(len(rows) for _, rows in moved)
