"""How often each feature fires on evaluation tokens: dead share (`sae_lens_attn.dead`)
and per-head L0.

Per-head L0 counts each active feature towards the heads its decoder row lives in
(`sae_head_attribution`, decoder-norm fractions): for a block-diagonal SAE that is the
number of active features in head h's block; for a dense SAE each active feature is
split across heads by its fractions. Either way the per-head L0s add up to the L0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.attribution.heads import sae_head_attribution
from sae_lens_attn.dead import DeadFeatures, dead_features
from sae_lens_attn.detectors.base import encode_hook_z
from sae_lens_attn.sources.hook_z import HookZSource

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.sources.head_layout import HeadLayout


@dataclass(frozen=True)
class FeatureActivity:
    """`fire_counts [d_sae]` (tokens each feature fired on), `n_tokens`, and
    `per_head_l0 [n_heads]` (mean active features per token, split by head, in the
    layout's head order)."""

    fire_counts: torch.Tensor
    n_tokens: int
    per_head_l0: torch.Tensor

    @property
    def live(self) -> torch.Tensor:
        """`[d_sae]` bool: fired at least once."""
        return self.fire_counts > 0

    @property
    def dead(self) -> DeadFeatures:
        """The features that never fired, named with N (`sae_lens_attn.dead`)."""
        return dead_features(self.fire_counts, self.n_tokens)

    @property
    def dead_share(self) -> float:
        return self.dead.share

    @property
    def l0(self) -> float:
        return self.per_head_l0.sum().item()

    def live_features(self) -> list[int]:
        return torch.nonzero(self.live).flatten().tolist()


@torch.no_grad()
def feature_activity(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    tokens: torch.Tensor,
    batch_size: int = 16,
) -> FeatureActivity:
    """Fire counts and per-head L0 of `sae` on `tokens [n_prompts, pos]` (every position)."""
    source = HookZSource(model, layout.layer, layout.heads)
    head_share = sae_head_attribution(sae, layout.n_heads).float().cpu()  # [d_sae, n_heads]
    fire_counts = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    head_active = torch.zeros(layout.n_heads, dtype=torch.float64)
    n_tokens = 0
    for start in range(0, tokens.shape[0], batch_size):
        x = source.activations(tokens[start: start + batch_size].to(model.cfg.device))
        active = (encode_hook_z(sae, x, layout) > 0).flatten(0, -2).cpu()  # [tokens, d_sae]
        fire_counts += active.sum(dim=0)
        head_active += (active.float() @ head_share).sum(dim=0).double()
        n_tokens += active.shape[0]
    if n_tokens == 0:
        raise ValueError("no evaluation tokens: pass tokens of shape [n_prompts >= 1, pos >= 1]")
    return FeatureActivity(fire_counts, n_tokens, (head_active / n_tokens).float())
