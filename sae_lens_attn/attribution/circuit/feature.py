"""Circuit attribution of one hook_z SAE feature on one prompt (Kissane et al., 2024).

`feature_circuit` runs the three parts and picks what to look at:
- value side (`upstream`): the feature's pre-activation at its destination, split
  by source position, head and upstream residual component (optionally into an upstream
  SAE's features + error, `split`);
- query/key side (`query_key`): what raises the attention score of the head that
  carries most of the top source's contribution;
- downstream (`downstream`): direct logit effect against the total effect of
  ablating the feature in the spliced SAE.
`upstream_rows`, `query_key_rows` and `downstream_rows` turn the results into table rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from sae_lens_attn.attribution.circuit.context import CircuitContext, circuit_context
from sae_lens_attn.attribution.circuit.downstream import DownstreamEffect, downstream_effect
from sae_lens_attn.attribution.circuit.query_key import (
    QueryKeyAttribution,
    query_key_attribution,
    query_key_unsupported,
)
from sae_lens_attn.attribution.circuit.upstream import (
    ValueSideAttribution,
    value_side_attribution,
)
from sae_lens_attn.models.token_display import quoted
from sae_lens_attn.sources.model_inputs import check_token_rows

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

Decode = Callable[[int], str]


@dataclass(frozen=True)
class FeatureCircuit:
    """Value side, query/key side (top source and head) and downstream effects of
    `feature` at `destination` of one prompt `tokens [pos]`."""

    feature: int
    destination: int
    activation: float
    tokens: torch.Tensor
    value: ValueSideAttribution
    top_sources: list[int]
    query_key: QueryKeyAttribution | None
    downstream: DownstreamEffect | None

    @property
    def top_head(self) -> int | None:
        return None if self.query_key is None else self.query_key.head


def pick_destination(context: CircuitContext, feature: int) -> int:
    """The position where the feature is most active (most pre-activated if it is silent)."""
    acts = context.acts_of(feature)
    scores = acts if bool((acts > 0).any()) else context.pre_acts_of(feature)
    return int(scores.argmax())


def feature_circuit(
    model: HookedTransformer,
    sae: SAE,
    tokens: torch.Tensor,
    feature: int,
    destination: int | None = None,
    n_sources: int = 3,
    upstream_saes: Sequence[SAE] = (),
    query_key: bool = True,
    downstream: bool = True,
) -> FeatureCircuit:
    """Circuit attribution of `feature` on one prompt `tokens [pos]` (or `[1, pos]`).

    `destination`: the position to explain (default: where the feature is most active).
    `n_sources`: how many top source positions to keep. `downstream` needs an SAE on all
    heads of its layer (it is spliced into hook_z).
    """
    tokens = tokens.reshape(-1) if tokens.dim() == 2 and tokens.shape[0] == 1 else tokens
    if tokens.dim() != 1:
        raise ValueError(f"expected one prompt [pos] or [1, pos], got {list(tokens.shape)}")
    check_token_rows(tokens, model, "prompt")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None])
    context = circuit_context(model, sae, cache, batch=0, upstream_saes=upstream_saes)
    circuit = circuit_from_context(context, tokens, feature, destination, n_sources, query_key)
    if downstream:
        circuit = replace(circuit, downstream=downstream_effect(model, sae, tokens, feature))
    return circuit


def circuit_from_context(
    context: CircuitContext,
    tokens: torch.Tensor,
    feature: int,
    destination: int | None = None,
    n_sources: int = 3,
    query_key: bool = True,
) -> FeatureCircuit:
    """Value side and query/key side of `feature` from a prepared context (no downstream;
    no query/key side for models whose scores are not bilinear, see
    `query_key.query_key_unsupported`).

    A context does not depend on the feature, so one serves every feature of a prompt.
    """
    if destination is None:
        destination = pick_destination(context, feature)
    value = value_side_attribution(context, feature, destination)
    sources = value.top_sources(n_sources)
    qk = None
    if query_key and query_key_unsupported(context.model) is None:
        head_index = int(value.dfa[sources[0]].abs().argmax())
        qk = query_key_attribution(context, value.heads[head_index], destination, sources[0])
    return FeatureCircuit(
        feature=feature,
        destination=destination,
        activation=context.acts_of(feature)[destination].item(),
        tokens=tokens.detach().cpu(),
        value=value,
        top_sources=sources,
        query_key=qk,
        downstream=None,
    )


def upstream_rows(circuit: FeatureCircuit, decode: Decode = str) -> list[dict[str, Any]]:
    """One row per (top source, head, term) with a non-zero contribution, then the two
    per-destination terms (`b_dec centring`, `b_enc`) with no source or head."""
    value = circuit.value
    rows = []
    for source in circuit.top_sources:
        token = decode(int(circuit.tokens[source]))
        for i, head in enumerate(value.heads):
            for label, term in zip(value.labels, value.terms[:, source, i].tolist(), strict=True):
                if term != 0.0:
                    rows.append(
                        {
                            "source": source,
                            "source_token": token,
                            "head": head,
                            "component": label,
                            "contribution": term,
                        }
                    )
    for label, term in (("b_dec centring", value.centring), ("b_enc", value.b_enc)):
        rows.append(
            {
                "source": None,
                "source_token": None,
                "head": None,
                "component": label,
                "contribution": term,
            }
        )
    return rows


def component_totals(circuit: FeatureCircuit, decode: Decode = str) -> list[tuple[str, float]]:
    """(label, contribution) of each (top source, component), summed over heads, largest
    |contribution| first; labels read `src 7 'tok': L0H3`."""
    value = circuit.value
    totals = []
    for source in circuit.top_sources:
        token = decode(int(circuit.tokens[source]))
        by_term = value.terms[:, source].sum(-1).tolist()
        totals.extend(
            (f"src {source} {quoted(token)}: {label}", term)
            for label, term in zip(value.labels, by_term, strict=True)
            if term != 0.0
        )
    return sorted(totals, key=lambda item: -abs(item[1]))


def query_key_rows(circuit: FeatureCircuit) -> list[dict[str, Any]]:
    """Each query-side term (at the destination) and key-side term (at the top source)
    with its share of the top head's attention score, largest |share| first per side."""
    qk = circuit.query_key
    if qk is None:
        return []
    rows = []
    for side, labels, totals in (
        ("query", qk.query_labels, qk.query_totals.tolist()),
        ("key", qk.key_labels, qk.key_totals.tolist()),
    ):
        ordered = sorted(zip(labels, totals, strict=True), key=lambda item: -abs(item[1]))
        rows.extend(
            {
                "head": qk.head,
                "destination": qk.destination,
                "source": qk.source,
                "side": side,
                "component": label,
                "score_contribution": total,
            }
            for label, total in ordered
        )
    return rows


def downstream_rows(
    circuit: FeatureCircuit, k: int = 10, decode: Decode = str
) -> list[dict[str, Any]]:
    """Direct, total and indirect logit effects at the destination for the `k` tokens the
    feature promotes most directly and the `k` it promotes most in total."""
    effect = circuit.downstream
    if effect is None:
        return []
    position = circuit.destination
    tokens = effect.top_tokens(position, k, by="direct")
    tokens += [t for t in effect.top_tokens(position, k, by="total") if t not in tokens]
    return [
        {
            "position": position,
            "token_id": token,
            "token": decode(token),
            "direct": effect.direct[position, token].item(),
            "total": effect.total[position, token].item(),
            "indirect": effect.indirect[position, token].item(),
        }
        for token in tokens
    ]


def circuit_summary(circuit: FeatureCircuit, k: int = 5, decode: Decode = str) -> dict[str, Any]:
    """The headline numbers of a circuit as plain data (JSON-ready)."""
    value = circuit.value
    by_source = value.dfa.sum(-1)
    summary: dict[str, Any] = {
        "feature": circuit.feature,
        "layer": value.layer,
        "destination": circuit.destination,
        "destination_token": decode(int(circuit.tokens[circuit.destination])),
        "activation": circuit.activation,
        "pre_activation": value.pre_activation,
        "closure_error": value.closure_error,
        "top_sources": [
            {"source": s, "token": decode(int(circuit.tokens[s])), "dfa": by_source[s].item()}
            for s in circuit.top_sources
        ],
        "top_components": [
            {"component": label, "contribution": total}
            for label, total in component_totals(circuit, decode)[:k]
        ],
    }
    if circuit.query_key is not None:
        qk = circuit.query_key
        summary["query_key"] = {
            "head": qk.head,
            "source": qk.source,
            "score": qk.score,
            "closure_error": qk.closure_error,
        }
    if circuit.downstream is not None:
        rows = downstream_rows(circuit, k, decode)
        summary["top_promoted_direct"] = rows[:k]
        summary["final_ln_scale_frozen"] = circuit.downstream.final_ln_scale_frozen
    return summary
