""""<t> is next by induction" features (Kissane et al., 2024), found automatically.

For each live feature, `t` is the token it promotes most through its direct logit effect
(`W_dec W_O W_U`, through the final LayerNorm by default). Packed random-token prompts
(`induction_prompts`) test every such token at once: a feature is a member when

- it fires (activation > `activation_threshold`) on at least `min_induction_rate` of the
  second `A`s of `A t ... A` (its induction tests), and
- it fires on at most `max_control_rate` of both controls: second `A`s of
  `A <other> ... A` (induction tests of other tokens) and first `A`s (no earlier `A`).

Its score is the induction rate minus the larger control rate. One forward pass, stopped
at the SAE's hook_z, serves every feature: each feature reads the positions that test its
own token, and at those the SAE encodes only the features tested there where features
encode independently (`encode_hook_z_columns`: SAELens's standard, JumpReLU and gated
SAEs), else every feature; batches holding control sequences encode every feature. The
controls are
the first `n_control_sequences` sequences (default 64: 512 positions of each kind), whose
slots test random tokens.

**Live features**: with evaluation `tokens`, those that fire at least once on them;
without, those whose decoder row is not zero. Rows of features that are not live say
`evidence["live"] = False`; the family's share is of live features (`family_summary`).
Members also get their head attribution (`sae_head_attribution`: decoder-norm fraction
per head, keyed by the model's head index).

Defaults: `n_prompts=8` tests per token, `pairs_per_sequence=8`, `gap=1` (prompts of 41
tokens, 5 per test),
`activation_threshold=0`, `min_induction_rate=0.75`, `max_control_rate=0.1`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sae_lens_attn._safe_output import plotly_text, plotly_texts
from sae_lens_attn.attribution.heads import sae_head_attribution
from sae_lens_attn.attribution.logit_lens import (
    DEFAULT_CHUNK_SIZE,
    dead_rows,
    iter_logit_weights,
    sae_output_directions,
    unembed_through_final_ln,
)
from sae_lens_attn.dead import silent_label
from sae_lens_attn.detectors.base import (
    DEAD_SUMMARY,
    display_token,
    encode_hook_z,
    encode_hook_z_columns,
    feature_index,
    resolve_layout,
    token_strings_of,
)
from sae_lens_attn.detectors.classes import FamilyRow
from sae_lens_attn.detectors.induction_prompts import InductionPrompts, induction_prompts
from sae_lens_attn.sources.hook_z import HookZSource

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.sources.head_layout import HeadLayout

__all__ = ["FAMILY", "InductionCounts", "InductionDetector", "live_features", "top_promoted_tokens"]

FAMILY = "induction"


@dataclass
class InductionCounts:
    """Per-feature firing counts `[n]` on induction tests and the two controls, and the
    summed activation on induction tests and on all control positions."""

    induction_fires: torch.Tensor
    induction_tests: torch.Tensor
    other_fires: torch.Tensor
    other_tests: torch.Tensor
    no_prev_fires: torch.Tensor
    no_prev_tests: torch.Tensor
    induction_act_sum: torch.Tensor
    control_act_sum: torch.Tensor

    @classmethod
    def zeros(cls, n: int) -> InductionCounts:
        return cls(*(torch.zeros(n, dtype=torch.float64) for _ in range(8)))

    @staticmethod
    def rate(fires: torch.Tensor, tests: torch.Tensor) -> torch.Tensor:
        return torch.where(tests > 0, fires / tests.clamp_min(1), 0.0)


@torch.no_grad()
def live_features(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    index: torch.Tensor,
    tokens: torch.Tensor | None = None,
    batch_size: int = 16,
    activation_threshold: float = 0.0,
) -> torch.Tensor:
    """`[len(index)]` bool: a finite, nonzero decoder row (`dead_rows`) that also fires
    on `tokens [batch, pos]` when those are given."""
    usable = ~dead_rows(sae.W_dec.detach()[index.to(sae.W_dec.device)]).cpu()
    if tokens is None:
        return usable
    source = HookZSource(model, layout.layer, layout.heads)
    fired = torch.zeros(len(index), dtype=torch.bool)
    for start in range(0, tokens.shape[0], batch_size):
        x = source.activations(tokens[start : start + batch_size].to(model.cfg.device))
        acts = encode_hook_z(sae, x, layout)[..., index.to(x.device)]
        fired |= (acts.flatten(0, -2) > activation_threshold).any(dim=0).cpu()
    return fired & usable


def top_promoted_tokens(
    directions: torch.Tensor, W_U: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(token [n], logit weight [n])`: each direction's most promoted token."""
    tokens, values = [], []
    for _, weights in iter_logit_weights(directions, W_U, chunk_size):
        best = weights.max(dim=1)
        tokens.append(best.indices.cpu())
        values.append(best.values.cpu())
    if not tokens:
        return torch.empty(0, dtype=torch.long), torch.empty(0)
    return torch.cat(tokens), torch.cat(values)


def _random_token_pool(model: HookedTransformer) -> torch.Tensor:
    """Every input token id except the tokenizer's special ones."""
    pool = torch.ones(model.cfg.d_vocab, dtype=torch.bool)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        special = [i for i in tokenizer.all_special_ids if 0 <= i < model.cfg.d_vocab]
        pool[special] = False
    return pool.nonzero().flatten()


def _bos_token_id(model: HookedTransformer) -> int | None:
    tokenizer = getattr(model, "tokenizer", None)
    if not model.cfg.default_prepend_bos or tokenizer is None:
        return None
    return tokenizer.bos_token_id


def _matching_pairs(tested: torch.Tensor, top_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All `(position, feature)` with `top_tokens[feature] == tested[position]`, without
    a dense `[positions, features]` comparison (a token is the top token of few features)."""
    order = top_tokens.argsort()
    sorted_tokens = top_tokens[order]
    low = torch.searchsorted(sorted_tokens, tested)
    count = torch.searchsorted(sorted_tokens, tested, right=True) - low
    position = torch.repeat_interleave(torch.arange(len(tested)), count)
    within = torch.arange(len(position)) - (count.cumsum(0) - count)[position]
    return position, order[low[position] + within]


@torch.no_grad()
def count_induction_firing(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    index: torch.Tensor,
    top_tokens: torch.Tensor,
    prompts: InductionPrompts,
    batch_size: int = 64,
    activation_threshold: float = 0.0,
    n_control_sequences: int = 64,
    progress: bool = False,
) -> InductionCounts:
    """Run the prompts (each batch once, stopped at hook_z) and count, for the features
    `index` with top tokens `top_tokens`, firing on induction tests and controls.

    Every test position counts for the features whose top token it tests. The first
    `n_control_sequences` sequences also serve as controls for every feature: their test
    positions of other tokens and their first `A`s.
    """
    from tqdm.auto import tqdm

    source = HookZSource(model, layout.layer, layout.heads)
    counts = InductionCounts.zeros(len(index))
    device = model.cfg.device
    feature_columns = index.to(sae.W_dec.device)
    n_tests = prompts.test_positions.shape[1]
    starts = range(0, len(prompts), batch_size)
    bar = tqdm(total=len(prompts), desc="induction prompts", unit="prompt", disable=not progress)
    for start in starts:
        rows = slice(start, start + batch_size)
        x = source.activations(prompts.tokens[rows].to(device))  # [b, pos, d_in]
        n_controls = max(0, min(n_control_sequences - start, x.shape[0]))  # leading rows
        positions = torch.cat(
            [prompts.test_positions[rows].flatten(), prompts.first_positions[rows][:n_controls].flatten()]
        )
        sequence = torch.cat(
            [torch.arange(x.shape[0]).repeat_interleave(n_tests), torch.arange(n_controls).repeat_interleave(n_tests)]
        )
        at = x[sequence.to(x.device), positions.to(x.device)]  # [b*K + controls*K, d_in]
        n_test_rows, n_control_rows = x.shape[0] * n_tests, n_controls * n_tests
        position, feature = _matching_pairs(prompts.tested_tokens[rows].flatten(), top_tokens)
        if n_controls:  # control rows: every feature, at their test positions and first As
            acts = encode_hook_z(sae, at, layout)[:, feature_columns].float().cpu()
            tests, firsts = acts[:n_test_rows], acts[n_test_rows:]
            matched = tests[position, feature]
        else:  # a test position matters only to the features whose top token it tests
            needed, slot = feature.unique(return_inverse=True)
            columns = feature_columns[needed.to(feature_columns.device)]
            matched = encode_hook_z_columns(sae, at, layout, columns).float().cpu()[position, slot]
        counts.induction_fires.index_add_(0, feature, (matched > activation_threshold).double())
        counts.induction_tests.index_add_(0, feature, torch.ones_like(matched, dtype=torch.float64))
        counts.induction_act_sum.index_add_(0, feature, matched.double())
        if n_controls:
            controls = tests[:n_control_rows]
            is_control = position < n_control_rows
            own = torch.zeros_like(controls, dtype=torch.bool)
            own[position[is_control], feature[is_control]] = True
            counts.other_fires += ((controls > activation_threshold) & ~own).sum(dim=0)
            counts.other_tests += (~own).sum(dim=0)
            counts.no_prev_fires += (firsts > activation_threshold).sum(dim=0)
            counts.no_prev_tests += firsts.shape[0]
            counts.control_act_sum += controls.masked_fill(own, 0.0).sum(dim=0) + firsts.sum(dim=0)
        bar.update(x.shape[0])
    bar.close()
    return counts


class InductionDetector:
    """"<t> is next by induction" features, tested on packed random-token prompts."""

    name = "induction"
    description = '"<token> is next by induction" features (Kissane et al.), with head attribution'

    def detect(
        self,
        model: HookedTransformer,
        sae: SAE,
        layout: HeadLayout | None = None,
        *,
        features: Sequence[int] | None = None,
        tokens: torch.Tensor | None = None,
        n_prompts: int = 8,
        pairs_per_sequence: int = 8,
        gap: int = 1,
        activation_threshold: float = 0.0,
        min_induction_rate: float = 0.75,
        max_control_rate: float = 0.1,
        through_final_ln: bool = True,
        n_control_sequences: int = 64,
        batch_size: int = 64,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        seed: int = 0,
        progress: bool = False,
        **_: Any,
    ) -> list[FamilyRow]:
        """One row per feature (see the module docstring); `tokens [batch, pos]` are the
        evaluation tokens that decide which features are live."""
        if not 0 <= max_control_rate < min_induction_rate <= 1:
            raise ValueError(
                f"need 0 <= max_control_rate < min_induction_rate <= 1, got "
                f"{max_control_rate} and {min_induction_rate}"
            )
        layout = resolve_layout(sae, model, layout)
        index = feature_index(sae, features)
        live = live_features(model, sae, layout, index, tokens, activation_threshold=activation_threshold)
        tested = index[live]
        W_U = unembed_through_final_ln(model) if through_final_ln else model.W_U.detach()
        directions = sae_output_directions(sae, model, layout)[tested.to(sae.W_dec.device)]
        top_tokens, top_values = top_promoted_tokens(directions, W_U, chunk_size)
        counts = InductionCounts.zeros(0)
        if len(tested):
            prompts = induction_prompts(
                top_tokens.unique(),
                _random_token_pool(model),
                n_prompts,
                pairs_per_sequence,
                gap,
                _bos_token_id(model),
                seed,
            )
            if prompts.tokens.shape[1] > model.cfg.n_ctx:
                raise ValueError(
                    f"prompts of {prompts.tokens.shape[1]} tokens exceed the model's n_ctx "
                    f"{model.cfg.n_ctx}: lower pairs_per_sequence or gap"
                )
            counts = count_induction_firing(
                model, sae, layout, tested, top_tokens, prompts, batch_size, activation_threshold,
                n_control_sequences, progress,
            )
        return self._rows(
            model, sae, layout, index, live, tested, top_tokens, top_values, counts,
            min_induction_rate, max_control_rate, n_tokens=None if tokens is None else int(tokens.numel()),
        )

    def _rows(
        self,
        model: HookedTransformer,
        sae: SAE,
        layout: HeadLayout,
        index: torch.Tensor,
        live: torch.Tensor,
        tested: torch.Tensor,
        top_tokens: torch.Tensor,
        top_values: torch.Tensor,
        counts: InductionCounts,
        min_induction_rate: float,
        max_control_rate: float,
        n_tokens: int | None,
    ) -> list[FamilyRow]:
        rate = InductionCounts.rate
        induction = rate(counts.induction_fires, counts.induction_tests)
        other = rate(counts.other_fires, counts.other_tests)
        no_prev = rate(counts.no_prev_fires, counts.no_prev_tests)
        control = torch.maximum(other, no_prev)
        member = (counts.induction_tests > 0) & (induction >= min_induction_rate) & (control <= max_control_rate)
        members = tested[member]
        heads = sae_head_attribution(sae, layout.n_heads, members.to(sae.W_dec.device)).cpu()
        head_of = dict(zip(members.tolist(), heads.tolist(), strict=True))
        strings = token_strings_of(model)
        position = {feature: i for i, feature in enumerate(tested.tolist())}
        live_by = "weights" if n_tokens is None else "tokens"
        rows = []
        dead = dead_rows(sae.W_dec.detach()[index.to(sae.W_dec.device)]).tolist()
        for feature, is_live, is_dead in zip(index.tolist(), live.tolist(), dead, strict=True):
            if not is_live:
                summary = DEAD_SUMMARY if is_dead else f"not live: {silent_label(n_tokens or 0)}"
                evidence = {"live": False, "live_by": live_by, "summary": summary}
                rows.append(FamilyRow(self.name, feature, None, 0.0, evidence))
                continue
            i = position[feature]
            token = int(top_tokens[i])
            shown = display_token(strings, token)
            evidence: dict[str, Any] = {
                "live": True,
                "live_by": live_by,
                "token": token,
                "token_string": None if strings is None else strings[token],
                "top_logit_weight": top_values[i].item(),
                "induction_fires": int(counts.induction_fires[i]),
                "induction_tests": int(counts.induction_tests[i]),
                "other_fires": int(counts.other_fires[i]),
                "other_tests": int(counts.other_tests[i]),
                "no_prev_fires": int(counts.no_prev_fires[i]),
                "no_prev_tests": int(counts.no_prev_tests[i]),
                "induction_rate": induction[i].item(),
                "control_rate": control[i].item(),
                "mean_induction_activation": (counts.induction_act_sum[i] / counts.induction_tests[i].clamp_min(1)).item(),
                "mean_control_activation": (counts.control_act_sum[i] / (counts.other_tests[i] + counts.no_prev_tests[i]).clamp_min(1)).item(),
            }
            tally = (
                f"fires on {evidence['induction_fires']}/{evidence['induction_tests']} induction "
                f"prompts, {control[i].item():.0%} of controls"
            )
            if feature in head_of:
                fractions = head_of[feature]
                evidence["heads"] = dict(zip(layout.head_labels, fractions, strict=True))
                top = max(range(len(fractions)), key=fractions.__getitem__)
                evidence["top_head"] = layout.heads[top]
                evidence["summary"] = f"{shown} is next by induction ({tally}; {layout.head_labels[top]})"
                rows.append(FamilyRow(self.name, feature, FAMILY, (induction[i] - control[i]).item(), evidence))
            else:
                evidence["summary"] = f"not induction for {shown} ({tally})"
                rows.append(FamilyRow(self.name, feature, None, (induction[i] - control[i]).item(), evidence))
        return rows

    def figures(self, rows: Sequence[FamilyRow], model: HookedTransformer | None = None) -> dict[str, go.Figure]:
        rows = [row for row in rows if row.detector == self.name and row.live]
        return {"induction_rates": induction_figure(rows)} if rows else {}


def induction_figure(rows: Sequence[FamilyRow]) -> go.Figure:
    """Scatter of control rate vs induction rate of live features, members highlighted."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for is_member, label in ((False, "not induction"), (True, "induction")):
        chosen = [r for r in rows if (r.family == FAMILY) == is_member]
        figure.add_trace(
            go.Scattergl(
                x=[r.evidence.get("control_rate", 0.0) for r in chosen],
                y=[r.evidence.get("induction_rate", 0.0) for r in chosen],
                mode="markers",
                marker={"size": 5, "opacity": 0.6},
                name=f"{label} ({len(chosen)})",
                text=plotly_texts(f"feature {r.feature}: {r.evidence.get('summary', '')}"
                                  for r in chosen),
                hoverinfo="text",
            )
        )
    share = sum(r.family == FAMILY for r in rows) / max(len(rows), 1)
    figure.update_layout(
        title=plotly_text(f'"<token> is next by induction": {share:.1%} of {len(rows)} live features'),
        xaxis_title=plotly_text("firing rate on controls (max of A <other> ... A, no earlier A)"),
        yaxis_title=plotly_text("firing rate on A <token> ... A"),
        template="plotly_white",
    )
    return figure
