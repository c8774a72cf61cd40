"""`HeadLayout`: which attention heads of which layer an SAE's input is made of.

An SAE on `blocks.L.attn.hook_z` sees `x = z[..., heads, :].flatten(-2)` (head-major, as
`einops.rearrange(z, "... h d -> ... (h d)")`). The layout names the layer, the heads in
input order and `d_head`, so that every module (block-diagonal config, DFA, head
attribution, dashboards, circuits) slices `x` and `W_O` the same way. It is stored in the
SAE's metadata under `head_layout` and read back with `HeadLayout.from_sae`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sae_lens_attn.errors import InvalidInputError

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

METADATA_KEY = "head_layout"
_HOOK_Z_PATTERN = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")


def head_label(layer: int, head: int) -> str:
    """The one way heads are named in output: `L1H2` is head 2 of layer 1."""
    return f"L{layer}H{head}"


@dataclass(frozen=True)
class HeadLayout:
    """Layer, heads (in the SAE input's order) and `d_head` of a hook_z SAE input.

    `n_model_heads` is the number of (query) heads of the layer in the model; `heads` may
    be any subset in any order. Feature `x[..., i*d_head:(i+1)*d_head]` is head `heads[i]`.
    """

    layer: int
    heads: tuple[int, ...]
    d_head: int
    n_model_heads: int

    def __post_init__(self) -> None:
        if not self.heads:
            raise InvalidInputError("a head layout needs at least one head")
        if len(set(self.heads)) != len(self.heads):
            raise InvalidInputError(f"heads must not repeat, got {list(self.heads)}")
        bad = [h for h in self.heads if not 0 <= h < self.n_model_heads]
        if bad:
            raise InvalidInputError(
                f"head index {bad[0]} is out of range for layer {self.layer}; "
                f"valid heads are 0..{self.n_model_heads - 1}"
            )
        if self.d_head <= 0 or self.layer < 0:
            raise InvalidInputError(f"invalid layout: layer={self.layer}, d_head={self.d_head}")

    @property
    def n_heads(self) -> int:
        """Number of heads in the SAE input."""
        return len(self.heads)

    @property
    def d_in(self) -> int:
        """SAE input width: `n_heads * d_head`."""
        return self.n_heads * self.d_head

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.attn.hook_z"

    @property
    def uses_all_heads(self) -> bool:
        return self.heads == tuple(range(self.n_model_heads))

    def head_slice(self, position: int) -> slice:
        """Columns of the SAE input that belong to `heads[position]`."""
        return slice(position * self.d_head, (position + 1) * self.d_head)

    @property
    def head_labels(self) -> list[str]:
        """`L{layer}H{head}` of each head, in input order."""
        return [head_label(self.layer, head) for head in self.heads]

    @property
    def slices(self) -> list[slice]:
        return [self.head_slice(i) for i in range(self.n_heads)]

    def select(self, z: torch.Tensor) -> torch.Tensor:
        """hook_z `[..., n_model_heads, d_head]` -> SAE input `[..., n_heads * d_head]`."""
        if z.shape[-2:] != (self.n_model_heads, self.d_head):
            raise InvalidInputError(
                f"expected hook_z ending in [{self.n_model_heads}, {self.d_head}], "
                f"got {list(z.shape)}"
            )
        if not self.uses_all_heads:
            z = z[..., list(self.heads), :]
        return z.flatten(-2)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """SAE-input-shaped `[..., n_heads * d_head]` -> `[..., n_heads, d_head]`."""
        if x.shape[-1] != self.d_in:
            raise InvalidInputError(f"expected last dimension {self.d_in}, got {list(x.shape)}")
        return x.unflatten(-1, (self.n_heads, self.d_head))

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "heads": list(self.heads),
            "d_head": self.d_head,
            "n_model_heads": self.n_model_heads,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadLayout:
        """The layout `to_dict` wrote; anything else is an `InvalidInputError`."""
        fields = ("layer", "heads", "d_head", "n_model_heads")
        if not isinstance(data, dict) or not set(fields) <= set(data):
            raise InvalidInputError(
                f"head_layout {data!r}: expected a mapping with the keys {list(fields)}")
        heads = data["heads"]
        numbers = [data["layer"], data["d_head"], data["n_model_heads"],
                   *(heads if isinstance(heads, (list, tuple)) else [None])]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
            raise InvalidInputError(
                f"head_layout {data!r}: layer, d_head, n_model_heads must be integers and "
                "heads a list of integers")
        return cls(layer=data["layer"], heads=tuple(heads), d_head=data["d_head"],
                   n_model_heads=data["n_model_heads"])

    def check_against(self, model: HookedTransformer, hook_name: str | None = None) -> None:
        """This layout fits `model` (layer, head count, d_head) and names the same layer
        as `hook_name` (an SAE's `metadata.hook_name`), else an `InvalidInputError`."""
        cfg = model.cfg
        expected = (f"the model has layers 0..{cfg.n_layers - 1} with {cfg.n_heads} heads "
                    f"of d_head={cfg.d_head}")
        if self.layer >= cfg.n_layers or (self.n_model_heads, self.d_head) != (cfg.n_heads, cfg.d_head):
            raise InvalidInputError(
                f"head_layout {self.to_dict()} does not fit the model: {expected}; was the "
                "SAE trained on another model?")
        if hook_name and hook_name != self.hook_name:
            raise InvalidInputError(
                f"head_layout names {self.hook_name} but the SAE's hook_name is "
                f"{hook_name!r}; the two must name the same layer")

    @classmethod
    def for_model(
        cls, model: HookedTransformer, layer: int, heads: Sequence[int] | None = None
    ) -> HeadLayout:
        """Layout of layer `layer` of `model`, all heads unless `heads` is given."""
        n_layers = model.cfg.n_layers
        if not 0 <= layer < n_layers:
            raise InvalidInputError(
                f"layer {layer} is out of range; expected one of "
                f"blocks.0.attn.hook_z .. blocks.{n_layers - 1}.attn.hook_z"
            )
        n_model_heads = model.cfg.n_heads
        return cls(
            layer=layer,
            heads=tuple(range(n_model_heads)) if heads is None else tuple(int(h) for h in heads),
            d_head=model.cfg.d_head,
            n_model_heads=n_model_heads,
        )

    @classmethod
    def from_hook_name(
        cls, model: HookedTransformer, hook_name: str, heads: Sequence[int] | None = None
    ) -> HeadLayout:
        """Layout for a `blocks.L.attn.hook_z` name; any other hook is a ValueError."""
        return cls.for_model(model, layer_of_hook_z(hook_name, model.cfg.n_layers), heads)

    @classmethod
    def from_sae(cls, sae: SAE, model: HookedTransformer) -> HeadLayout:
        """The layout an SAE was trained on: its stored `head_layout` metadata if any,
        else all heads of the layer its `hook_name` names."""
        stored = sae.cfg.metadata.get(METADATA_KEY)
        hook_name = sae.cfg.metadata.hook_name
        if stored:
            layout = cls.from_dict(stored)
            layout.check_against(model, hook_name)
        else:
            layout = cls.from_hook_name(model, hook_name or "")
        if layout.d_in != sae.cfg.d_in:
            raise InvalidInputError(
                f"SAE d_in={sae.cfg.d_in} does not match {layout.hook_name} with heads "
                f"{list(layout.heads)} (n_heads * d_head = {layout.d_in})"
            )
        return layout

    def store_in(self, sae: SAE) -> None:
        """Record this layout (and the hook name) in the SAE's metadata, saved with it."""
        sae.cfg.metadata[METADATA_KEY] = self.to_dict()
        sae.cfg.metadata.hook_name = self.hook_name


def layer_of_hook_z(hook_name: str, n_layers: int) -> int:
    """The layer of `blocks.L.attn.hook_z`; a ValueError naming the valid hooks otherwise."""
    valid = f"blocks.0.attn.hook_z .. blocks.{n_layers - 1}.attn.hook_z"
    match = _HOOK_Z_PATTERN.match(hook_name)
    if match is None:
        raise InvalidInputError(f"hook {hook_name!r} is not an attention z hook; expected one of {valid}")
    layer = int(match.group(1))
    if layer >= n_layers:
        raise InvalidInputError(f"hook {hook_name!r}: layer {layer} is out of range; expected one of {valid}")
    return layer
