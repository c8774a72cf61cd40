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


def _weights(sae: nn.Module) -> tuple[nn.Parameter, nn.Parameter]:
    """`(decoder, encoder)`: the SAE's weights, read as `[G, m, w]` and `[G, w, m]` by
    `_view` (G heads for a block-diagonal SAE, 1 for a dense one)."""
    if (reason := unsupported_reason(sae)) is not None:
        raise ValueError(f"dead-feature resampling: {reason}")
    if hasattr(sae, "W_dec_blocks"):
        return sae.W_dec_blocks, sae.W_enc_blocks
    return sae.W_dec, sae.W_enc


def _view(tensor: torch.Tensor) -> torch.Tensor:
    """A weight (or its Adam moment) as `[G, m, w]` (decoder) or `[G, w, m]` (encoder):
    block weights as they are, a dense one as its only group."""
    return tensor if tensor.ndim == 3 else tensor.unsqueeze(0)


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
    decoder, encoder = _weights(sae)
    dec, enc = _view(decoder.data), _view(encoder.data)
    n_groups, per_group, width = dec.shape
    error = (sae_in - sae(sae_in)).reshape(-1, n_groups, width)  # [batch, G, w]
    dead_rows = dead.view(n_groups, per_group)
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
        dec_norm = dec[group][live].norm(dim=-1).mean() if live.any() else 1.0
        enc_norm = enc[group][:, live].norm(dim=0).mean() if live.any() else 1.0
        bias = sae.b_enc.data[group * per_group : (group + 1) * per_group]
        dec[group, rows] = directions * dec_norm
        enc[group][:, rows] = directions.T * enc_norm
        bias[rows] = bias[live].mean() if live.any() else 0.0
        moved.append((group, rows))
    _reset_adam(optimizer, decoder, encoder, sae.b_enc, per_group, moved)
    return sum(len(rows) for _, rows in moved)


def _reset_adam(
    optimizer: torch.optim.Optimizer,
    decoder: nn.Parameter,
    encoder: nn.Parameter,
    b_enc: nn.Parameter,
    per_group: int,
    moved: list[tuple[int, torch.Tensor]],
) -> None:
    """Zero the Adam moments (`exp_avg`, `exp_avg_sq`) of the moved features' entries."""
    for param, kind in ((decoder, "decoder"), (encoder, "encoder"), (b_enc, "bias")):
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key not in state:
                continue
            moment = state[key]
            for group, rows in moved:
                if kind == "decoder":
                    _view(moment)[group, rows] = 0
                elif kind == "encoder":
                    _view(moment)[group][:, rows] = 0
                else:
                    moment[group * per_group + rows] = 0
