"""`HookZSource`: SAE inputs from `blocks.L.attn.hook_z`, heads kept first-class.

The source runs the model only as far as it must: a hook on `blocks.L.attn.hook_z` copies
the activations and stops the forward pass right there (`capture_hook_z`, which several
sources on different layers share in multi-SAE training), so neither the attention output
projection of layer L, nor its MLP, nor any later layer is computed, and no
`ActivationCache` is built. hook_z is per query head, so grouped-query-attention models
(`n_key_value_heads < n_heads`) need nothing special.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer

from sae_lens_attn._atomic import atomic_write_text
from sae_lens_attn.sources.head_layout import HeadLayout
from sae_lens_attn.sources.model_inputs import check_token_rows

STATE_FILENAME = "hook_z_source.json"


class _StopForward(Exception):
    """Raised by the hook_z hook once it has what it needs; ends the forward pass."""


@torch.no_grad()
def capture_hook_z(
    model: HookedTransformer, tokens: torch.Tensor, layers: Iterable[int], **model_kwargs: Any
) -> dict[int, torch.Tensor]:
    """hook_z `[batch, pos, n_model_heads, d_head]` of each of `layers`, from one forward
    pass of `tokens [batch, pos]` that stops right after the deepest layer's hook_z."""
    wanted = sorted(set(layers))
    if not wanted:
        raise ValueError("capture_hook_z needs at least one layer")
    check_token_rows(tokens, model)
    deepest = wanted[-1]
    captured: dict[int, torch.Tensor] = {}

    def capture(z: torch.Tensor, hook: Any, layer: int) -> None:
        captured[layer] = z
        if layer == deepest:
            raise _StopForward

    hooks = [(f"blocks.{layer}.attn.hook_z", partial(capture, layer=layer)) for layer in wanted]
    with model.hooks(fwd_hooks=hooks):
        try:
            model(tokens, stop_at_layer=deepest + 1, **model_kwargs)
        except _StopForward:
            pass
    missing = [layer for layer in wanted if layer not in captured]
    if missing:
        raise RuntimeError(
            f"{', '.join(f'blocks.{layer}.attn.hook_z' for layer in missing)} not called "
            "during the forward pass"
        )
    return captured


class HookZSource:
    """Activations of some heads of one attention layer, as SAE inputs.

    `activations(tokens)` gives `[batch, pos, n_heads * d_head]` in head-major order (the
    layout's heads, in their given order); `iter_batches` yields `[tokens, d_in]` batches.
    With `per_head_norm=True`, `normalize` scales each head's slice so that its mean
    norm is `sqrt(d_head)` (scale estimated from a sample by `estimate_per_head_scale`);
    the scale is folded into the SAE when training ends (`fold_input_scale`).
    """

    def __init__(
        self,
        model: HookedTransformer,
        layer: int,
        heads: Sequence[int] | None = None,
        per_head_norm: bool = False,
    ) -> None:
        self.model = model
        self.layout = HeadLayout.for_model(model, layer, heads)
        self.per_head_norm = per_head_norm
        self.per_head_scale: torch.Tensor | None = None  # [n_heads], set by estimation

    @classmethod
    def from_hook_name(
        cls,
        model: HookedTransformer,
        hook_name: str,
        heads: Sequence[int] | None = None,
        per_head_norm: bool = False,
    ) -> HookZSource:
        """Source for `blocks.L.attn.hook_z`; any other hook name is a ValueError."""
        layout = HeadLayout.from_hook_name(model, hook_name, heads)
        return cls(model, layout.layer, layout.heads, per_head_norm)

    @property
    def d_in(self) -> int:
        return self.layout.d_in

    @property
    def hook_name(self) -> str:
        return self.layout.hook_name

    @torch.no_grad()
    def activations(self, tokens: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
        """Raw hook_z of the layout's heads: tokens `[batch, pos]` -> `[batch, pos, d_in]`.

        The forward pass stops inside layer `layout.layer`, right after hook_z.
        """
        layer = self.layout.layer
        return self.layout.select(capture_hook_z(self.model, tokens, [layer], **model_kwargs)[layer])

    @property
    def input_scale(self) -> torch.Tensor | None:
        """`[d_in]` factor applied by `normalize` (each head's scale repeated `d_head`
        times), or None without per-head normalisation."""
        if not self.per_head_norm:
            return None
        if self.per_head_scale is None:
            raise RuntimeError(
                "per_head_norm=True but no scale estimated yet: call "
                "estimate_per_head_scale(activations) first"
            )
        return self.per_head_scale.repeat_interleave(self.layout.d_head)

    @torch.no_grad()
    def estimate_per_head_scale(self, activations: torch.Tensor) -> torch.Tensor:
        """Set and return `per_head_scale [n_heads] = sqrt(d_head) / mean_tokens ||z_h||`
        from raw activations `[..., d_in]`."""
        mean_norms = self.layout.split(activations).float().norm(dim=-1).flatten(0, -2).mean(0)
        if (mean_norms == 0).any():
            dead = [self.layout.heads[i] for i in torch.nonzero(mean_norms == 0).flatten().tolist()]
            raise ValueError(f"heads {dead} are all zeros in the sample: cannot normalise them")
        self.per_head_scale = (self.layout.d_head**0.5 / mean_norms).cpu()
        return self.per_head_scale

    def normalize(self, activations: torch.Tensor) -> torch.Tensor:
        """Raw `[..., d_in]` -> what the SAE trains on (scaled per head if `per_head_norm`)."""
        scale = self.input_scale
        if scale is None:
            return activations
        return activations * scale.to(activations.device, activations.dtype)

    def iter_batches(
        self, tokens: torch.Tensor, batch_size_prompts: int = 8, **model_kwargs: Any
    ) -> Iterator[torch.Tensor]:
        """Yield normalised `[batch_size_prompts * pos, d_in]` batches for tokens
        `[n_prompts, pos]`, in order. With `per_head_norm` and no scale yet, the first
        batch is the sample the scale is estimated from."""
        for start in range(0, tokens.shape[0], batch_size_prompts):
            acts = self.activations(tokens[start : start + batch_size_prompts], **model_kwargs)
            if self.per_head_norm and self.per_head_scale is None:
                self.estimate_per_head_scale(acts)
            yield self.normalize(acts).flatten(0, 1)

    def save_state(self, folder: str | Path) -> Path:
        """Write `hook_z_source.json` (head layout and per-head scale) into `folder`."""
        path = Path(folder) / STATE_FILENAME
        scale = None if self.per_head_scale is None else self.per_head_scale.tolist()
        atomic_write_text(path, json.dumps({"head_layout": self.layout.to_dict(), "per_head_scale": scale}))
        return path

    def load_state(self, folder: str | Path) -> None:
        """Check `folder`'s `hook_z_source.json` describes this source's heads and take its
        per-head scale (if it has one and this source normalises)."""
        path = Path(folder) / STATE_FILENAME
        state = json.loads(path.read_text())
        stored = HeadLayout.from_dict(state["head_layout"])
        if stored != self.layout:
            raise ValueError(
                f"{path} holds {stored.hook_name} heads {list(stored.heads)} (d_head "
                f"{stored.d_head}), but this source reads {self.hook_name} heads "
                f"{list(self.layout.heads)} (d_head {self.layout.d_head})"
            )
        if self.per_head_norm and state["per_head_scale"] is not None:
            self.per_head_scale = torch.tensor(state["per_head_scale"])

    def __repr__(self) -> str:
        return (
            f"HookZSource({self.hook_name}, heads={list(self.layout.heads)}, "
            f"d_in={self.d_in}, per_head_norm={self.per_head_norm})"
        )
