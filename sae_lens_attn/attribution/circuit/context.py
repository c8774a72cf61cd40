"""`CircuitContext`: one prompt's cache, the hook_z SAE and the residual components that
the value-side and query/key-side attributions share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.attribution.circuit.components import (
    ComponentSplit,
    LayerInputComponents,
    layer_input_components,
    single_prompt_cache,
)
from sae_lens_attn.attribution.circuit.split import sae_input, split_with_sae
from sae_lens_attn.sources.head_layout import HeadLayout

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import ActivationCache, HookedTransformer


@dataclass(frozen=True)
class CircuitContext:
    """Everything the attributions of one prompt need.

    `cache`: single-prompt cache (no batch dimension). `sae_in [pos, d_in]`: the SAE input
    (the layout's heads of hook_z, flattened head-major). `pre_acts [pos, d_sae]`: the
    SAE's own pre-activations (`hook_sae_acts_pre`), `acts [pos, d_sae]` its activations.
    """

    model: HookedTransformer
    sae: SAE
    layout: HeadLayout
    cache: ActivationCache
    components: LayerInputComponents
    splits: tuple[ComponentSplit, ...]
    sae_in: torch.Tensor
    pre_acts: torch.Tensor
    acts: torch.Tensor

    @property
    def n_positions(self) -> int:
        return self.sae_in.shape[0]

    def check_feature(self, feature: int) -> None:
        d_sae = self.pre_acts.shape[-1]
        if not 0 <= feature < d_sae:
            raise ValueError(f"feature {feature} is out of range; the SAE has features 0..{d_sae - 1}")

    def check_position(self, position: int, what: str = "position") -> None:
        if not 0 <= position < self.n_positions:
            raise ValueError(
                f"{what} {position} is out of range; the prompt has positions "
                f"0..{self.n_positions - 1}"
            )


def circuit_context(
    model: HookedTransformer,
    sae: SAE,
    cache: ActivationCache,
    batch: int = 0,
    upstream_saes: Sequence[SAE] = (),
    layout: HeadLayout | None = None,
) -> CircuitContext:
    """Build the context for prompt `batch` of `cache` (from `model.run_with_cache`).

    `upstream_saes`: SAEs on earlier hooks whose features replace the components their
    hook carries (see `split.split_with_sae`).
    """
    layout = layout or HeadLayout.from_sae(sae, model)
    prompt_cache = single_prompt_cache(cache, batch)
    splits = tuple(split_with_sae(up, prompt_cache, model, layout.layer) for up in upstream_saes)
    components = layer_input_components(prompt_cache, model, layout.layer, splits)
    z = prompt_cache[layout.hook_name].detach()
    captured: dict[str, torch.Tensor] = {}
    # Hooks named by module path rather than read back by `HookPoint.name`: splicing an SAE
    # into a HookedSAETransformer renames its hook points (see circuit_downstream).
    fwd_hooks = [
        (f"hook_sae_acts_{key}", lambda act, hook, key=key: captured.__setitem__(key, act))
        for key in ("pre", "post")
    ]
    with torch.no_grad():
        sae.run_with_hooks(sae_input(sae, z, layout), fwd_hooks=fwd_hooks)
    return CircuitContext(
        model=model,
        sae=sae,
        layout=layout,
        cache=prompt_cache,
        components=components,
        splits=splits,
        sae_in=layout.select(z),
        pre_acts=captured["pre"].detach(),
        acts=captured["post"].detach(),
    )
