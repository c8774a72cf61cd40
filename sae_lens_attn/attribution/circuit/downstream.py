"""Downstream circuit attribution: a feature's direct effect on the logits vs its total.

The SAE is spliced into the model at hook_z with SAELens's `HookedSAETransformer`
(`use_error_term=True`, so the clean run reproduces the model exactly). Ablating feature
j (its activation set to zero) changes hook_z by `delta_z = a_j * W_dec[j]` per position.

- Direct effect: `delta_z` through W_O, the final LayerNorm with its scale frozen at the
  clean run's value (centred, divided by `ln_final.hook_scale`, times its weight) and W_U.
- Total effect: clean logits minus ablated logits. What is not direct goes through later
  layers (and, unless `freeze_final_ln_scale`, through the final LayerNorm's scale).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.sources.head_layout import HeadLayout

if TYPE_CHECKING:
    from sae_lens import SAE, HookedSAETransformer
    from transformer_lens import HookedTransformer


@dataclass(frozen=True)
class DownstreamEffect:
    """Logit effects of ablating `feature` on one prompt, per position and token.

    `activation [pos]`: the feature's activation. `direct`, `total` `[pos, d_vocab]`:
    logits with the feature minus logits without it, directly (W_O -> frozen ln_final ->
    W_U, the feature at that position only) and in total (the ablated forward pass).
    """

    feature: int
    layer: int
    activation: torch.Tensor
    direct: torch.Tensor
    total: torch.Tensor
    final_ln_scale_frozen: bool

    @property
    def indirect(self) -> torch.Tensor:
        """`[pos, d_vocab]`: total minus direct, the path through later layers."""
        return self.total - self.direct

    def top_tokens(self, position: int, k: int, by: str = "direct") -> list[int]:
        """The `k` tokens the feature promotes most at `position`, by `direct` or `total`."""
        if by not in ("direct", "total"):
            raise ValueError(f"by must be 'direct' or 'total', got {by!r}")
        effect = self.direct if by == "direct" else self.total
        return effect[position].topk(k).indices.tolist()


def as_hooked_sae_transformer(model: HookedTransformer) -> HookedSAETransformer:
    """`model` itself if it is a `HookedSAETransformer`, else one with the same weights."""
    from sae_lens import HookedSAETransformer

    if isinstance(model, HookedSAETransformer):
        return model
    cfg = copy.deepcopy(model.cfg)
    cfg.init_weights = False
    spliced = HookedSAETransformer(cfg)
    spliced.load_state_dict(model.state_dict())
    spliced.tokenizer = model.tokenizer
    return spliced.eval()


def downstream_effect(
    model: HookedTransformer,
    sae: SAE,
    tokens: torch.Tensor,
    feature: int,
    freeze_final_ln_scale: bool = False,
) -> DownstreamEffect:
    """Direct and total logit effects of `feature` on one prompt `tokens [pos]` (or
    `[1, pos]`). The feature is ablated at every position; `freeze_final_ln_scale` holds
    the final LayerNorm scale at its clean value in the ablated run too. A plain
    `HookedTransformer` is copied into a `HookedSAETransformer` on every call: pass one
    (`as_hooked_sae_transformer(model)`) when calling this many times."""
    tokens = tokens.reshape(1, -1) if tokens.dim() == 1 else tokens
    if tokens.shape[0] != 1:
        raise ValueError(f"expected one prompt, got tokens of shape {list(tokens.shape)}")
    layout = HeadLayout.from_sae(sae, model)
    if not layout.uses_all_heads:
        raise ValueError(
            "HookedSAETransformer splices an SAE into the whole hook_z; this SAE reads heads "
            f"{list(layout.heads)} of {layout.n_model_heads}, so it cannot be spliced"
        )
    if not 0 <= feature < sae.cfg.d_sae:
        raise ValueError(
            f"feature {feature} is out of range; the SAE has features 0..{sae.cfg.d_sae - 1}"
        )
    spliced = as_hooked_sae_transformer(model)
    hook = layout.hook_name
    names = (f"{hook}.hook_sae_acts_post", f"{hook}.hook_sae_output", "ln_final.hook_scale")
    with _spliceable(sae), spliced.saes(saes=[sae], use_error_term=True), torch.no_grad():
        clean_logits, cache = spliced.run_with_cache(tokens, names_filter=list(names))
        captured: dict[str, torch.Tensor] = {}

        def ablate(acts: torch.Tensor, hook) -> torch.Tensor:
            acts = acts.clone()
            acts[..., feature] = 0.0
            return acts

        def capture(output: torch.Tensor, hook) -> None:
            captured["z"] = output

        hooks = [(names[0], ablate), (names[1], capture)]
        if (
            freeze_final_ln_scale and names[2] in spliced.hook_dict
        ):  # no final LN: nothing to freeze
            hooks.append((names[2], lambda scale, hook: cache[names[2]]))
        ablated_logits = spliced.run_with_hooks(tokens, fwd_hooks=hooks)
        delta_z = cache[names[1]] - captured["z"]  # [1, pos, n_heads, d_head]
        delta_resid = torch.einsum("bphd,hdm->bpm", delta_z, spliced.blocks[layout.layer].attn.W_O)
        final = cache.apply_ln_to_stack(delta_resid[None], layer=None)[0]
        weight = getattr(getattr(spliced, "ln_final", None), "w", None)
        if isinstance(weight, torch.Tensor):
            final = final * weight
        direct = final @ spliced.W_U
    return DownstreamEffect(
        feature=feature,
        layer=layout.layer,
        activation=cache[names[0]][0, :, feature].detach(),
        direct=direct[0].detach(),
        total=(clean_logits - ablated_logits)[0].detach(),
        final_ln_scale_frozen=freeze_final_ln_scale,
    )


@contextlib.contextmanager
def _spliceable(sae: SAE) -> Iterator[None]:
    """Prepare `sae` for splicing at hook_z and undo the side effects afterwards.

    Splicing needs SAELens's hook_z reshaping (`reshape_activations="hook_z"`): SAEs saved
    without it get it for the duration of the run. And `HookedSAETransformer.add_sae`
    (sae_lens 6.54) renames the SAE's own hook points for good (`hook_sae_acts_pre`
    becomes `blocks.L.attn.hook_z.hook_sae_acts_pre`, so `sae.run_with_cache` keys
    change); `sae.setup()` gives them their names back.
    """
    reshaping = getattr(sae, "hook_z_reshaping_mode", False)
    if not reshaping:
        sae.turn_on_forward_pass_hook_z_reshaping()
    try:
        yield
    finally:
        if not reshaping:
            sae.turn_off_forward_pass_hook_z_reshaping()
        sae.setup()
