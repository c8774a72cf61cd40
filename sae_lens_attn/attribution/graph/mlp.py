"""MLP SAEs and transcoders in an attribution graph: which MLP layer each one is for, and
its features on one prompt.

An MLP SAE reads and writes `blocks.L.hook_mlp_out`: its features split the MLP output
but, the MLP not being linear, they are leaves. A transcoder (SAELens's `Transcoder` and
its skip and JumpReLU kinds) reads the MLP's input, `blocks.L.ln2.hook_normalized` or
`blocks.L.hook_resid_mid`, and writes `hook_mlp_out`: with the ln2 scale frozen its
pre-activation is linear in the residual stream, so its features get incoming edges
(`reads.TranscoderReads`). A skip transcoder's `W_skip` term is in the layer's MLP error
node.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sae_lens_attn.attribution.graph.nodes import MlpFeatures, encode

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import ActivationCache, HookedTransformer

_MLP_OUT = re.compile(r"^blocks\.(\d+)\.hook_mlp_out$")
_TRANSCODER_IN = re.compile(r"^blocks\.(\d+)\.(?:ln2\.hook_normalized|hook_resid_mid)$")


def check_linear_input(sae: SAE, what: str) -> None:
    """A ValueError when `sae` normalises its input at run time (its features would not
    add up linearly); `what` names it."""
    if sae.cfg.normalize_activations not in ("none", None):
        raise ValueError(
            f"the {what} normalises its input at run time "
            f"({sae.cfg.normalize_activations!r}), so its features do not add up linearly; "
            "use one with normalize_activations 'none'"
        )


def check_mlp_saes(
    model: HookedTransformer, mlp_saes: Sequence[SAE], transcoders: Sequence[SAE]
) -> dict[int, tuple[SAE, bool]]:
    """`{layer: (sae, is_transcoder)}`: at most one MLP SAE or transcoder per MLP layer, each
    on its hooks and this model's shapes. A ValueError says what is wrong."""
    from sae_lens import Transcoder

    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    if (mlp_saes or transcoders) and model.cfg.attn_only:
        raise ValueError("the model is attention-only: it has no MLP for an MLP SAE or transcoder")
    by_layer: dict[int, tuple[SAE, bool]] = {}
    for sae, transcoder in [*((s, False) for s in mlp_saes), *((s, True) for s in transcoders)]:
        what = "transcoder" if transcoder else "MLP SAE"
        hook = sae.cfg.metadata.hook_name or ""
        pattern, expected = (
            (_TRANSCODER_IN, "blocks.L.ln2.hook_normalized or blocks.L.hook_resid_mid")
            if transcoder
            else (_MLP_OUT, "blocks.L.hook_mlp_out")
        )
        match = pattern.match(hook)
        if match is None or int(match.group(1)) >= n_layers or hook not in model.hook_dict:
            raise ValueError(
                f"{what} on {hook!r}: a{'' if transcoder else 'n'} {what} reads {expected} "
                f"(L = 0..{n_layers - 1}) of this model"
            )
        if transcoder != isinstance(sae, Transcoder):
            kind = type(sae).__name__
            raise ValueError(
                f"{what} on {hook!r} is a {kind}: give SAELens transcoders (Transcoder, "
                "SkipTranscoder, JumpReLUTranscoder, ...) as transcoders and other SAEs on "
                "hook_mlp_out as MLP SAEs"
            )
        layer = int(match.group(1))
        out = getattr(sae.cfg.metadata, "hook_name_out", None)
        if transcoder and out not in (None, "", f"blocks.{layer}.hook_mlp_out"):
            raise ValueError(
                f"transcoder on {hook!r} writes {out!r}; a graph takes transcoders that write "
                f"the same layer's MLP output (blocks.{layer}.hook_mlp_out)"
            )
        d_out = getattr(sae.cfg, "d_out", sae.cfg.d_in)
        if (sae.cfg.d_in, d_out) != (d_model, d_model):
            raise ValueError(
                f"the layer-{layer} {what} maps {sae.cfg.d_in} to {d_out} dimensions; this "
                f"model's residual stream has d_model={d_model}"
            )
        check_linear_input(sae, f"layer-{layer} {what}")
        if layer in by_layer:
            other = "transcoder" if by_layer[layer][1] else "MLP SAE"
            both = "two " + what + "s" if other == what else "an MLP SAE and a transcoder"
            raise ValueError(
                f"{both} for layer {layer} (blocks.{layer}.hook_mlp_out); give one MLP SAE or "
                "transcoder per MLP layer"
            )
        by_layer[layer] = (sae, transcoder)
    return by_layer


def mlp_features(sae: SAE, layer: int, transcoder: bool, cache: ActivationCache) -> MlpFeatures:
    """Encode the single-prompt `cache`'s input of `sae` (checked by `check_mlp_saes`)."""
    hook = sae.cfg.metadata.hook_name
    pre, post = encode(sae, cache[hook].detach().to(sae.dtype))
    return MlpFeatures(sae, layer, transcoder, hook, pre, post)
