"""`CircuitContext`: one prompt's cache, the hook_z SAE and the residual components that
the value-side and query/key-side attributions share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.attribution._sae_weights import column_view, features_encode_independently
from sae_lens_attn.attribution.circuit.components import (
    ComponentSplit,
    LayerInputComponents,
    cache_head_results,
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
    SAE's own pre-activations (`hook_sae_acts_pre`), `acts [pos, d_sae]` its activations;
    with `features`, `[pos, len(features)]` for those features only (read them with
    `pre_acts_of` / `acts_of`).
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
    features: tuple[int, ...] | None = None

    @property
    def n_positions(self) -> int:
        return self.sae_in.shape[0]

    def check_feature(self, feature: int) -> None:
        d_sae = self.sae.cfg.d_sae
        if not 0 <= feature < d_sae:
            raise ValueError(
                f"feature {feature} is out of range; the SAE has features 0..{d_sae - 1}"
            )
        if self.features is not None and feature not in self.features:
            raise ValueError(f"feature {feature} was not encoded in this context")

    def pre_acts_of(self, feature: int) -> torch.Tensor:
        """`[pos]`: the feature's pre-activation at every position."""
        return self.pre_acts[:, self._column(feature)]

    def acts_of(self, feature: int) -> torch.Tensor:
        """`[pos]`: the feature's activation at every position."""
        return self.acts[:, self._column(feature)]

    def _column(self, feature: int) -> int:
        self.check_feature(feature)
        return feature if self.features is None else self.features.index(feature)

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
    z = prompt_cache[layout.hook_name].detach()
    pre_acts, acts = _sae_activations(sae, z, layout)
    return _context(model, sae, layout, prompt_cache, upstream_saes, pre_acts, acts)


def circuit_contexts(
    model: HookedTransformer,
    sae: SAE,
    tokens: torch.Tensor,
    layout: HeadLayout | None = None,
    features: Sequence[int] | None = None,
) -> list[CircuitContext]:
    """The contexts of every prompt of `tokens [n_prompts, pos]` from one batched forward
    pass that stops after the SAE's layer (nothing later is read), the same as
    `circuit_context` of each prompt up to float rounding.

    `features`: only these features' `pre_acts` / `acts` are computed and kept (the
    contexts' `features`), a fraction of the encoder's work for SAELens's standard,
    JumpReLU and gated SAEs; other SAEs encode every feature and keep those.
    """
    layout = layout or HeadLayout.from_sae(sae, model)
    cache = cache_to_attention(model, tokens.to(model.cfg.device), layout.layer)
    components = layer_input_components(cache, model, layout.layer)
    z = cache[layout.hook_name].detach()
    kept = None if features is None else tuple(int(f) for f in features)
    columns = None if kept is None else torch.as_tensor(kept, dtype=torch.long)
    pre_acts, acts = _sae_activations(sae, z, layout, columns)
    contexts = []
    for b in range(tokens.shape[0]):
        prompt_cache = single_prompt_cache(cache, b)
        contexts.append(
            CircuitContext(
                model=model,
                sae=sae,
                layout=layout,
                cache=prompt_cache,
                components=replace(components, normalized=components.normalized[:, b]),
                splits=(),
                sae_in=layout.select(prompt_cache[layout.hook_name].detach()),
                pre_acts=pre_acts[b],
                acts=acts[b],
                features=kept,
            )
        )
    return contexts


class _Stop(Exception):
    """Raised by a hook to end a forward pass once what is needed is cached."""


def cache_to_attention(
    model: HookedTransformer, tokens: torch.Tensor, layer: int
) -> ActivationCache:
    """The activation cache of `tokens [batch, pos]` up to layer `layer`'s attention
    (its pattern, scores and hook_z; nothing of its MLP or later), with head results.

    TransformerLens's `stop_at_layer` would still run the layer's MLP; a hook after the
    attention's hook_z ends the pass instead."""
    from transformer_lens import ActivationCache

    cache_dict, caching_hooks, _ = model.get_caching_hooks()

    def stop(activation: torch.Tensor, hook: object) -> None:
        raise _Stop

    stopper = (f"blocks.{layer}.attn.hook_z", stop)
    with torch.no_grad(), model.hooks(fwd_hooks=[*caching_hooks, stopper]):
        try:
            model(tokens, stop_at_layer=layer + 1)
        except _Stop:
            pass
    cache = ActivationCache(cache_dict, model)
    cache_head_results(cache)
    return cache


def _sae_activations(
    sae: SAE, z: torch.Tensor, layout: HeadLayout, columns: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`hook_sae_acts_pre` and `hook_sae_acts_post` `[..., pos, d_sae]` of the SAE on hook_z
    `z [..., pos, n_model_heads, d_head]`; with `columns`, `[..., pos, len(columns)]`."""
    captured: dict[str, torch.Tensor] = {}
    # Hooks named by module path rather than read back by `HookPoint.name`: splicing an SAE
    # into a HookedSAETransformer renames its hook points (see circuit_downstream).
    fwd_hooks = [
        (f"hook_sae_acts_{key}", lambda act, hook, key=key: captured.__setitem__(key, act))
        for key in ("pre", "post")
    ]
    if columns is None or not features_encode_independently(sae):
        with torch.no_grad():
            sae.run_with_hooks(sae_input(sae, z, layout), fwd_hooks=fwd_hooks)
        pre, post = captured["pre"].detach(), captured["post"].detach()
        if columns is None:
            return pre, post
        columns = columns.to(pre.device)
        return pre[..., columns], post[..., columns]
    # the view shares the SAE's hook points, so the hooks added to the SAE see its encode
    with torch.no_grad(), sae.hooks(fwd_hooks=fwd_hooks):
        column_view(sae, columns).encode(sae_input(sae, z, layout))
    return captured["pre"].detach(), captured["post"].detach()


def _context(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    prompt_cache: ActivationCache,
    upstream_saes: Sequence[SAE],
    pre_acts: torch.Tensor,
    acts: torch.Tensor,
) -> CircuitContext:
    splits = tuple(split_with_sae(up, prompt_cache, model, layout.layer) for up in upstream_saes)
    components = layer_input_components(prompt_cache, model, layout.layer, splits)
    return CircuitContext(
        model=model,
        sae=sae,
        layout=layout,
        cache=prompt_cache,
        components=components,
        splits=splits,
        sae_in=layout.select(prompt_cache[layout.hook_name].detach()),
        pre_acts=pre_acts,
        acts=acts,
    )
