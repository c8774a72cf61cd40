"""Residual-stream components entering an attention layer, through its frozen LayerNorm.

With the attention LayerNorm scale frozen (the cache's `blocks.L.ln1.hook_scale`), the
input of layer L's attention at every position is a sum of components: token and
positional embeddings, every earlier head's result, every earlier MLP's output and the
accumulated output biases (TransformerLens's `get_full_resid_decomposition` with
`expand_neurons=False`), each centred and divided by the frozen scale (`apply_ln_to_stack`)
and multiplied by the LayerNorm weight, plus the LayerNorm bias. Any of those components
can be split further by an upstream SAE (`sae_lens_attn.attribution.circuit.split`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformer_lens import ActivationCache, HookedTransformer


@dataclass(frozen=True)
class ComponentSplit:
    """An upstream SAE's parts in the residual stream, for one prompt.

    `stack [n_parts, pos, d_model]` holds, with `labels`, each active feature's
    `a_f * W_dec[f]` (`{name}:f{index}`), the decoder bias (`{name}:b_dec`) and the
    reconstruction error (`{name}:error`). Their sum equals the sum of the components
    named in `replaces` plus `bias [d_model]`, the part of TransformerLens's `bias`
    component (accumulated `b_O`) the hook carries.
    """

    name: str
    hook_name: str
    labels: list[str]
    stack: torch.Tensor
    replaces: list[str]
    bias: torch.Tensor
    features: list[int]


@dataclass(frozen=True)
class LayerInputComponents:
    """What each residual component writes into layer `layer`'s attention input.

    `normalized[c, pos]` is component `labels[c]` at `pos`, centred, divided by the frozen
    ln1 scale and multiplied by the ln1 weight: `[n_components, pos, d_model]`.
    `ln_bias` is the ln1 bias `[d_model]` (zeros when the LayerNorm has none), so
    `normalized.sum(0) + ln_bias` equals ln1's output.
    """

    layer: int
    labels: list[str]
    normalized: torch.Tensor
    ln_bias: torch.Tensor


def single_prompt_cache(cache: ActivationCache, batch: int) -> ActivationCache:
    """The cache of prompt `batch` alone, without a batch dimension (a new cache, so that
    caching head results in it leaves the caller's cache untouched)."""
    if not cache.has_batch_dim:
        return cache
    n_batch = cache["hook_embed"].shape[0]
    if not 0 <= batch < n_batch:
        raise ValueError(f"batch index {batch} is out of range; the cache holds {n_batch} prompts")
    return cache.apply_slice_to_batch_dim(batch)


def cache_head_results(cache: ActivationCache) -> None:
    """Add `blocks.{l}.attn.hook_result` `[..., pos, n_heads, d_model]` (each head's write
    into the residual stream) for every layer whose hook_z the cache holds.

    Instead of `ActivationCache.compute_head_results`, which needs every layer's hook_z (a
    cache of a forward pass with `stop_at_layer` has only the first ones) and multiplies
    out a `[..., n_heads, d_head, d_model]` tensor before summing (150 MB a layer for one
    prompt of 64 tokens at gpt2-small's shape); the same sum as one einsum."""
    model = cache.model
    for layer in range(model.cfg.n_layers):
        name, z_name = f"blocks.{layer}.attn.hook_result", f"blocks.{layer}.attn.hook_z"
        if name in cache.cache_dict or z_name not in cache.cache_dict:
            continue
        W_O = model.blocks[layer].attn.W_O  # [n_heads, d_head, d_model]
        cache.cache_dict[name] = torch.einsum("...hd,hdm->...hm", cache[z_name], W_O)


def raw_layer_input_components(
    cache: ActivationCache, layer: int
) -> tuple[torch.Tensor, list[str]]:
    """TransformerLens's decomposition of `blocks.{layer}.hook_resid_pre` of one prompt:
    `[n_components, pos, d_model]` with labels `L{l}H{h}`, `{l}_mlp_out`, `embed`,
    `pos_embed`, `bias`. `cache` must have no batch dimension (`single_prompt_cache`)."""
    if cache.has_batch_dim:
        raise ValueError("expected a single-prompt cache; use single_prompt_cache(cache, batch)")
    return _decomposition(cache, layer)


def _decomposition(cache: ActivationCache, layer: int) -> tuple[torch.Tensor, list[str]]:
    """`get_full_resid_decomposition` of a cache with or without a batch dimension."""
    cache_head_results(cache)
    stack, labels = cache.get_full_resid_decomposition(
        layer, expand_neurons=False, apply_ln=False, return_labels=True
    )
    return stack, list(labels)


def replace_components(
    stack: torch.Tensor, labels: Sequence[str], splits: Sequence[ComponentSplit]
) -> tuple[torch.Tensor, list[str]]:
    """Swap the components each split covers for its finer parts (before LayerNorm).

    A split replaces the components named in `split.replaces` and the part `split.bias` of
    the `bias` component; its parts sum to what it replaces, so the total is unchanged.
    """
    labels = list(labels)
    keep = torch.ones(len(labels), dtype=torch.bool)
    stack = stack.clone()
    bias_index = labels.index("bias")
    for split in splits:
        missing = [name for name in split.replaces if name not in labels]
        if missing:
            raise ValueError(
                f"split {split.name!r} replaces {missing}, which are not components here "
                f"(available: {labels}); two splits must not cover the same component"
            )
        for name in split.replaces:
            index = labels.index(name)
            if not keep[index]:
                raise ValueError(f"component {name!r} is covered by two splits")
            keep[index] = False
        stack[bias_index] -= split.bias.to(stack)
    kept_labels = [label for label, kept in zip(labels, keep.tolist(), strict=True) if kept]
    parts = [stack[keep]] + [split.stack.to(stack) for split in splits]
    for split in splits:
        kept_labels.extend(split.labels)
    return torch.cat(parts, dim=0), kept_labels


def layer_input_components(
    cache: ActivationCache,
    model: HookedTransformer,
    layer: int,
    splits: Sequence[ComponentSplit] = (),
) -> LayerInputComponents:
    """Components of layer `layer`'s attention input (after ln1) for one prompt.

    `cache`: a single-prompt cache (`single_prompt_cache`), or a batched one without
    `splits` (then `normalized` is `[n_components, batch, pos, d_model]`, one pass for all
    prompts). `splits` refine components (see `split.split_with_sae`).
    """
    if model.cfg.positional_embedding_type == "shortformer":
        raise ValueError(
            "shortformer models add positional embeddings to queries and keys only, but "
            "TransformerLens's residual decomposition counts them in the residual stream; "
            "circuit attribution supports standard, rotary and alibi positions"
        )
    if cache.has_batch_dim and splits:
        raise ValueError("upstream SAE splits need a single-prompt cache (single_prompt_cache)")
    stack, labels = (_decomposition if cache.has_batch_dim else raw_layer_input_components)(
        cache, layer
    )
    if splits:
        stack, labels = replace_components(stack, labels, splits)
    normalized = cache.apply_ln_to_stack(stack, layer)
    ln = model.blocks[layer].ln1
    weight = getattr(ln, "w", None)
    if isinstance(weight, torch.Tensor):
        normalized = normalized * weight
    bias = getattr(ln, "b", None)
    zeros = stack.new_zeros(stack.shape[-1])
    ln_bias = bias.detach() if isinstance(bias, torch.Tensor) else zeros
    return LayerInputComponents(layer, labels, normalized.detach(), ln_bias)
