"""Split residual-stream components into an upstream SAE's features plus its error.

An SAE on an earlier hook (an MLP output, an attention layer's output or hook_z, or the
residual stream) rewrites what that hook carried as `sum_f a_f W_dec[f] + b_dec + error`,
mapped into the residual stream (through W_O for hook_z). Those parts replace the
TransformerLens components whose sum the hook is, so the total is unchanged and
attributions can name SAE features instead of whole layers.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.attribution.circuit.components import ComponentSplit, raw_layer_input_components
from sae_lens_attn.sources.head_layout import HeadLayout

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import ActivationCache, HookedTransformer

_HOOK_PATTERN = re.compile(
    r"^blocks\.(\d+)\.(hook_mlp_out|hook_attn_out|attn\.hook_z|hook_resid_pre|hook_resid_mid|"
    r"hook_resid_post)$"
)
SUPPORTED_UPSTREAM_HOOKS = (
    "blocks.L.hook_mlp_out, blocks.L.hook_attn_out, blocks.L.attn.hook_z, "
    "blocks.L.hook_resid_pre, blocks.L.hook_resid_mid, blocks.L.hook_resid_post"
)


def split_with_sae(
    sae: SAE, cache: ActivationCache, model: HookedTransformer, layer: int
) -> ComponentSplit:
    """Split the components that `sae`'s hook carries into features + b_dec + error.

    `cache`: single-prompt cache (no batch dimension). `layer`: the attention layer being
    attributed; the SAE's hook must be written before that layer's attention reads the
    residual stream. SAEs with run-time input normalisation (`constant_norm_rescale`,
    `layer_norm`) are refused: their decoder is not linear in the features.
    """
    hook_name = sae.cfg.metadata.hook_name or ""
    match = _HOOK_PATTERN.match(hook_name)
    if match is None:
        raise ValueError(
            f"upstream SAE hook {hook_name!r} is not supported; expected one of "
            f"{SUPPORTED_UPSTREAM_HOOKS}"
        )
    hook_layer, kind = int(match.group(1)), match.group(2).removeprefix("attn.")
    latest = layer if kind == "hook_resid_pre" else layer - 1
    if hook_layer > latest:
        raise ValueError(
            f"upstream SAE hook {hook_name!r} is not upstream of layer {layer}'s attention "
            f"input; use a hook of layer {latest} or earlier"
        )
    if sae.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
        raise ValueError(
            f"upstream SAE uses run-time input normalisation "
            f"{sae.cfg.normalize_activations!r}, so its features do not add up linearly; "
            "use an SAE with normalize_activations 'none' (or a folded scaling factor)"
        )
    name = f"{hook_layer}_{kind.removeprefix('hook_')}"
    replaces, bias = _covered_components(cache, model, hook_layer, kind)
    head_layout = HeadLayout.from_sae(sae, model) if kind == "hook_z" else None
    if head_layout is not None:
        replaces = [f"L{hook_layer}H{h}" for h in head_layout.heads]

    activation = cache[hook_name].detach()
    with torch.no_grad():
        sae_in = sae_input(sae, activation, head_layout)
        acts = sae.encode(sae_in)
        flat_in = head_layout.select(activation) if head_layout is not None else activation
        recon = sae.decode(acts).reshape(flat_in.shape)
    active = (acts != 0).any(dim=0).nonzero().flatten().tolist()
    parts = torch.cat(
        [
            acts[:, active].T[..., None] * sae.W_dec[active][:, None, :],
            sae.b_dec.expand_as(flat_in)[None],
            (flat_in - recon)[None],
        ]
    )
    stack = _to_residual(parts.detach(), model, head_layout)
    labels = [f"{name}:f{f}" for f in active] + [f"{name}:b_dec", f"{name}:error"]
    return ComponentSplit(name, hook_name, labels, stack, replaces, bias, active)


def _covered_components(
    cache: ActivationCache, model: HookedTransformer, hook_layer: int, kind: str
) -> tuple[list[str], torch.Tensor]:
    """Labels of the components the hook's activation is the sum of, and its bias part."""
    zeros = torch.zeros(model.cfg.d_model, device=cache["hook_embed"].device)
    heads = [f"L{hook_layer}H{h}" for h in range(model.cfg.n_heads)]
    if kind == "hook_mlp_out":
        return [f"{hook_layer}_mlp_out"], zeros
    if kind in ("hook_z", "hook_attn_out"):
        bias = model.blocks[hook_layer].attn.b_O.detach() if kind == "hook_attn_out" else zeros
        return heads, bias
    resid_layer = hook_layer + 1 if kind == "hook_resid_post" else hook_layer
    _, labels = raw_layer_input_components(cache, resid_layer)
    labels.remove("bias")
    bias = model.accumulated_bias(resid_layer, include_mlp_biases=False).detach()
    if kind == "hook_resid_mid":
        labels += heads
        bias = bias + model.blocks[hook_layer].attn.b_O.detach()
    return labels, bias


def sae_input(sae: SAE, activation: torch.Tensor, layout: HeadLayout | None) -> torch.Tensor:
    """What `sae.encode` expects for a cached activation `[pos, ...]` of its hook: hook_z
    `[pos, n_model_heads, d_head]` as is when the SAE reshapes hook_z itself
    (`reshape_activations="hook_z"`), else the layout's heads flattened `[pos, d_in]`."""
    if layout is None:
        return activation
    if getattr(sae, "hook_z_reshaping_mode", False):
        if not layout.uses_all_heads:
            raise ValueError("a hook_z SAE with reshape_activations='hook_z' must use all heads")
        return activation
    return layout.select(activation)


def _to_residual(
    parts: torch.Tensor, model: HookedTransformer, layout: HeadLayout | None
) -> torch.Tensor:
    """SAE-input-space vectors `[n, pos, d_in]` -> residual stream `[n, pos, d_model]`
    (through W_O of the layout's heads for hook_z, unchanged otherwise)."""
    if layout is None:
        return parts
    W_O = model.blocks[layout.layer].attn.W_O[list(layout.heads)].detach()
    return torch.einsum("nphd,hdm->npm", layout.split(parts), W_O)
