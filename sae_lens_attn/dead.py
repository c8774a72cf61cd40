"""One meaning of "dead": a feature is dead if it never fires on N held-out tokens.

Every output that counts dead features (the training summary, per-head evals,
`saes.json`, detect, the demo, dashboards and the atlas) counts them here and prints N
beside the count. A feature that did not fire on fewer than `DEAD_TOKENS` tokens is only
"not seen in N tokens": at a density of 1e-4 (a feature firing once per 10k tokens, common
in large dictionaries) it fires on none of 4096 tokens two times in three, so such a
sample cannot tell dead from rare; on 100k tokens it is missed with probability
e^-10 < 5e-5. SAELens's own window (`dead_feature_window`, 1000 training steps, 4M tokens
at a 4096-token batch) would cost 40 times more held-out evaluation for little gain, so
N defaults to `DEAD_TOKENS` = 100k held-out tokens.

SAELens's trainer records a different quantity, `num_dead_features` in the SAE's metadata:
features that did not fire in its last `dead_feature_window` training steps (1000 by
default, so 0 in any run shorter than that). Our outputs do not print it as "dead".
Our runs set that window to `DEAD_WINDOW_TOKENS` training tokens (`train
--dead-window-tokens`): it decides only which features the TopK auxiliary loss (AuxK)
tries to revive, so it must end within a short run; SAELens's 1000 steps never do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only tensor methods are called: the wording needs no torch import
    import torch

DEAD_TOKENS = 100_000  # held-out tokens needed before a feature that never fired is "dead"
DEAD_WINDOW_TOKENS = 16_384  # training tokens without firing before AuxK acts on a feature


@dataclass(frozen=True)
class DeadFeatures:
    """Features that never fired: `fire_counts [d_sae]` (tokens each feature fired on)
    over `n_tokens` held-out tokens; dead only if `n_tokens >= min_tokens`."""

    fire_counts: torch.Tensor
    n_tokens: int
    min_tokens: int = DEAD_TOKENS

    @property
    def mask(self) -> torch.Tensor:
        """`[d_sae]` bool: never fired on the tokens."""
        return self.fire_counts == 0

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    @property
    def share(self) -> float:
        return self.count / max(self.fire_counts.numel(), 1)

    @property
    def conclusive(self) -> bool:
        """True when the sample is large enough to call the features dead."""
        return self.n_tokens >= self.min_tokens

    @property
    def label(self) -> str:
        """`dead (never fired in 100,352 tokens)` or `not seen in 4,096 tokens`."""
        return silent_label(self.n_tokens, self.min_tokens)

    def describe(self) -> str:
        """One line: the count, its share and N, worded by `conclusive`."""
        total = self.fire_counts.numel()
        text = f"{self.label}: {self.count} of {total} features ({self.share:.1%})"
        if not self.conclusive:
            text += f"; too few tokens to call them dead (that needs {self.min_tokens:,})"
        return text

    def metrics(self) -> dict[str, float]:
        """Flat metrics for `saes.json`: `dead_eval_tokens` (N) and `not_seen_features`
        /`not_seen_share` always; `dead_features`/`dead_share` only when conclusive."""
        out = {
            "dead_eval_tokens": float(self.n_tokens),
            "not_seen_features": float(self.count),
            "not_seen_share": self.share,
        }
        if self.conclusive:
            out.update(dead_features=float(self.count), dead_share=self.share)
        return out

    def per_head_share(self, owner: torch.Tensor, n_heads: int) -> torch.Tensor:
        """`owner [d_sae]` (the head each feature belongs to) -> `[n_heads]` share of each
        head's features that never fired (0 for a head with no features)."""
        silent = owner[self.mask.to(owner.device)].bincount(minlength=n_heads).double()
        total = owner.bincount(minlength=n_heads).double()
        return silent / total.clamp_min(1)


def dead_features(
    fire_counts: torch.Tensor, n_tokens: int, min_tokens: int = DEAD_TOKENS
) -> DeadFeatures:
    """`DeadFeatures` of `fire_counts [d_sae]` counted over `n_tokens` held-out tokens."""
    if fire_counts.ndim != 1:
        raise ValueError(f"fire_counts must be [d_sae], got shape {list(fire_counts.shape)}")
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    return DeadFeatures(fire_counts.detach().cpu(), int(n_tokens), min_tokens)


def silent_label(n_tokens: int, min_tokens: int = DEAD_TOKENS) -> str:
    """What features that never fired on `n_tokens` tokens are called, with N."""
    if n_tokens >= min_tokens:
        return f"dead (never fired in {n_tokens:,} tokens)"
    return f"not seen in {n_tokens:,} tokens"
