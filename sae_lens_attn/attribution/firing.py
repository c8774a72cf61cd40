"""Which features fire on held-out tokens: the counts behind "dead" (`sae_lens_attn.dead`).

One model pass per batch, stopped right after the SAE's hook_z (`HookZSource`), then the
SAE's encoder: cheap enough to count over `DEAD_TOKENS` (100k) tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sae_lens_attn.column_counts import column_counts
from sae_lens_attn.dead import DEAD_TOKENS, DeadFeatures, dead_features
from sae_lens_attn.sources.hook_z import HookZSource

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.sources.head_layout import HeadLayout


def encode_flat(sae: SAE, x: torch.Tensor, layout: HeadLayout) -> torch.Tensor:
    """Feature acts `[..., d_sae]` of flat SAE input `x [..., d_in]`, whether or not the SAE
    reshapes hook_z itself (`reshape_activations="hook_z"` takes `[..., n_heads, d_head]`)."""
    reshaping = getattr(sae, "hook_z_reshaping_mode", False)
    return sae.encode((layout.split(x) if reshaping else x).to(sae.dtype))


@torch.no_grad()
def count_firings(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    tokens: torch.Tensor,
    batch_size: int = 32,
    min_tokens: int = DEAD_TOKENS,
) -> DeadFeatures:
    """`DeadFeatures` of `sae` over every position of `tokens [n_prompts, pos]` (raw hook_z
    input, as SAELens's evals): how many tokens each feature fired on, and N."""
    if tokens.ndim != 2:
        raise ValueError(f"expected tokens [n_prompts, pos], got {list(tokens.shape)}")
    source = HookZSource(model, layout.layer, layout.heads)
    fire_counts = torch.zeros(sae.cfg.d_sae, dtype=torch.long, device=sae.b_dec.device)
    n_tokens = 0
    for start in range(0, tokens.shape[0], batch_size):
        x = source.activations(tokens[start : start + batch_size].to(model.cfg.device))
        acts = encode_flat(sae, x.to(sae.b_dec.device), layout).flatten(0, -2)
        fire_counts += column_counts(acts)
        n_tokens += acts.shape[0]
    return dead_features(fire_counts, n_tokens, min_tokens)
