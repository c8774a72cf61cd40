"""Panel: DFA by source position for each shown top-activating example.

Each example's prompt is shown up to the max-activating token (bold), every token shaded by
its contribution to the feature's pre-activation there (red: positive, blue: negative,
scaled to the example's largest contribution); hovering a token shows the per-head split.
The JSON carries Neuronpedia's DFA fields (`dfa_values`, `dfa_maxValue`,
`dfa_targetIndex`, as sae_dashboard's Neuronpedia export names them) plus the per-head
values and the bias terms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sae_lens_attn.dashboard.panels import DashboardPanel, PanelOutput, esc
from sae_lens_attn.models.token_display import quoted

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sae_lens_attn.dashboard.panels import DashboardContext, FeatureReport, TopExample

MAX_HEADS_ON_HOVER = 12


def shade(value: float, scale: float) -> str:
    """CSS background for a contribution: red if positive, blue if negative."""
    alpha = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    rgb = "220,38,38" if value > 0 else "37,99,235"
    return f"rgba({rgb},{alpha:.2f})"


def head_split_text(values: Sequence[float], labels: Sequence[str], order: Sequence[int]) -> str:
    """Hover text: the heads' contributions in `order` (largest magnitude first)."""
    return "\n".join(f"{labels[h]}: {values[h]:+.4f}" for h in order)


def hover_orders(by_head: torch.Tensor) -> list[list[int]]:
    """`by_head [positions, heads]` -> per position the heads by falling magnitude (ties
    in head order), the first `MAX_HEADS_ON_HOVER`: one sort for the whole example."""
    return torch.sort(-by_head.abs(), dim=-1, stable=True).indices[:, :MAX_HEADS_ON_HOVER].tolist()


def rounded(values: torch.Tensor) -> list:
    """`values` as (nested) lists of floats rounded to 4 decimals, as `round(v, 4)` gives
    them, in one tensor operation instead of a Python call per number."""
    return torch.round(values.double(), decimals=4).tolist()


class DFAPanel(DashboardPanel):
    name = "dfa"
    title = "DFA by source position"
    wide = True

    def _example_html(self, example: TopExample, context: DashboardContext) -> str:
        by_source = example.dfa.sum(dim=-1)
        window = context.config.dfa_context
        start = 0 if window is None else max(0, example.dest - window)
        scale = float(by_source.abs().max()) if by_source.numel() else 0.0
        spans = ['<span class="sla-more">…</span>'] if start > 0 else []
        # one conversion to lists, not a tensor index per token
        values, by_head, orders = by_source.tolist(), example.dfa.tolist(), hover_orders(example.dfa)
        for position in range(start, example.dest + 1):
            value = values[position]
            tip = f"position {position}: {value:+.4f}\n" + head_split_text(
                by_head[position], context.head_labels, orders[position]
            )
            dest = " sla-dest" if position == example.dest else ""
            spans.append(
                f'<span class="sla-tok{dest}" style="background-color:{shade(value, scale)}" '
                f'data-tip="{esc(tip)}">{esc(context.decode(example.token_ids[position]))}</span>'
            )
        top = int(by_source.argmax())
        caption = (
            f"prompt {example.prompt_index}, position {example.dest}: activation "
            f"{example.activation:.3f}; pre-activation {example.pre_activation:.3f} = "
            f"DFA {float(by_source.sum()):.3f} + bias {example.dfa_bias:+.3f}; largest source "
            f"{quoted(context.decode(example.token_ids[top]))} at {top} ({float(by_source[top]):+.3f})"
        )
        return (
            f'<div class="sla-example"><div class="sla-caption">{esc(caption)}</div>'
            f'<div class="sla-tokens">{"".join(spans)}</div></div>'
        )

    def render(self, report: FeatureReport, context: DashboardContext) -> PanelOutput | None:
        if not report.examples:
            return None
        intro = (
            "Each token's contribution to the feature's pre-activation at the bold token "
            "(attention weight times value, through the encoder; summed over heads). "
            "Hover a token for the split by head."
        )
        body = "".join(self._example_html(example, context) for example in report.examples)
        return PanelOutput(
            html=f'<p class="sla-note">{esc(intro)}</p>{body}',
            data={"examples": [self._example_data(example, context) for example in report.examples]},
        )

    @staticmethod
    def _example_data(example: TopExample, context: DashboardContext) -> dict:
        by_source = example.dfa.sum(dim=-1)
        return {
            "prompt_index": example.prompt_index,
            "tokens": [context.decode(token) for token in example.token_ids],
            "activation": round(example.activation, 4),
            "pre_activation": round(example.pre_activation, 4),
            "bias_terms": round(example.dfa_bias, 4),
            "dfa_values": rounded(by_source),
            "dfa_maxValue": round(float(by_source.max()), 4),
            "dfa_targetIndex": example.dest,
            "dfa_values_by_head": rounded(example.dfa),
            "heads": list(context.head_labels),
        }
