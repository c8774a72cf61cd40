"""`DashboardConfig`: how much the dashboard page shows."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DashboardConfig:
    """Sizes of the page. sae_dashboard's defaults (20 top sequences, 10 quantile groups
    of 5, 50 bins) make pages of several MB per feature; these keep a 50-feature page
    reasonable. `dfa_examples`: how many of the shown top examples get a row in the DFA
    panel (None: all of them); `dfa_context`: tokens before the max-activating one shown
    there (None: the whole prompt).
    """

    top_acts_group_size: int = 8
    n_quantiles: int = 4
    quantile_group_size: int = 3
    buffer: tuple[int, int] = (5, 5)
    hist_bins: int = 40
    logits_table_rows: int = 10
    dfa_examples: int | None = None
    dfa_context: int | None = 40
    logit_lens_tokens: int = 10
    minibatch_size_tokens: int = 64
    minibatch_size_features: int = 64
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.dfa_examples is not None and self.dfa_examples > self.top_acts_group_size:
            raise ValueError(
                f"dfa_examples={self.dfa_examples} must not exceed top_acts_group_size="
                f"{self.top_acts_group_size} (DFA is shown for top-activating examples)"
            )
