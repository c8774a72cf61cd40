"""Query/key-side circuit attribution: what makes a head attend to a source position.

With the ln1 scale frozen, head h's attention score of destination q on source k is
bilinear in the layer's input components:

    score = (sum_a Q_a[q]) . (sum_b K_b[k]) / attn_scale,   Q_a = ln1 part a @ W_Q[h]

(Q and K of the `ln1.b` and `b_Q` / `b_K` terms included; with rotary embeddings each
part is rotated at its position, which is linear). The matrix `score[a, b]` sums exactly
to the score before softmax (TransformerLens's `hook_attn_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from sae_lens_attn.attribution.circuit.context import CircuitContext

SUPPORTED_POSITIONAL = ("standard", "rotary")


@dataclass(frozen=True)
class QueryKeyAttribution:
    """Head `head`'s attention score from `destination` to `source`, split bilinearly.

    `matrix [n_query_terms, n_key_terms]`: the score due to query-side term
    `query_labels[a]` (at the destination) paired with key-side term `key_labels[b]` (at
    the source). `matrix.sum() == score` up to float rounding.
    """

    head: int
    destination: int
    source: int
    query_labels: list[str]
    key_labels: list[str]
    matrix: torch.Tensor
    score: float

    @property
    def query_totals(self) -> torch.Tensor:
        """`[n_query_terms]`: each destination-side term against the whole key."""
        return self.matrix.sum(1)

    @property
    def key_totals(self) -> torch.Tensor:
        """`[n_key_terms]`: each source-side term against the whole query."""
        return self.matrix.sum(0)

    @property
    def closure_error(self) -> float:
        return self.score - self.matrix.sum().item()


def query_key_attribution(
    context: CircuitContext, head: int, destination: int, source: int
) -> QueryKeyAttribution:
    """Split head `head`'s (a TransformerLens head index of the SAE's layer) attention
    score from `destination` to `source` into query-side x key-side component pairs."""
    layer = context.layout.layer
    attn = context.model.blocks[layer].attn
    _check_supported(context, head)
    context.check_position(destination, "destination")
    context.check_position(source, "source")
    if source > destination and context.model.cfg.attention_dir == "causal":
        raise ValueError(f"source {source} is after destination {destination} (causal attention)")
    components = context.components
    labels = list(components.labels)
    with torch.no_grad():
        query = _projected_terms(context, attn.W_Q[head], attn.b_Q[head], destination)
        key = _projected_terms(context, attn.W_K[head], attn.b_K[head], source)
        matrix = query @ key.T / attn.attn_scale
    score = context.cache[f"blocks.{layer}.attn.hook_attn_scores"][head, destination, source]
    return QueryKeyAttribution(
        head=head,
        destination=destination,
        source=source,
        query_labels=[*labels, "ln1.b", "b_Q"],
        key_labels=[*labels, "ln1.b", "b_K"],
        matrix=matrix.detach(),
        score=score.item(),
    )


def _projected_terms(
    context: CircuitContext, weight: torch.Tensor, bias: torch.Tensor, position: int
) -> torch.Tensor:
    """Each component at `position`, then ln1.b, then the projection bias, through `weight
    [d_model, d_head]` (and rotary at `position`): `[n_components + 2, d_head]`."""
    normalized = context.components.normalized[:, position]
    terms = torch.cat(
        [
            normalized @ weight,
            (context.components.ln_bias @ weight)[None],
            bias[None],
        ]
    )
    if context.model.cfg.positional_embedding_type == "rotary":
        attn = context.model.blocks[context.layout.layer].attn
        placed = terms.new_zeros(terms.shape[0], position + 1, 1, terms.shape[-1])
        placed[:, position, 0] = terms
        terms = attn.apply_rotary(placed)[:, position, 0]
    return terms


def query_key_unsupported(model: HookedTransformer) -> str | None:
    """Why this model's attention scores are not bilinear in the residual stream, or None."""
    cfg = model.cfg
    if cfg.positional_embedding_type not in SUPPORTED_POSITIONAL:
        return (
            f"query/key attribution supports positional embeddings {SUPPORTED_POSITIONAL}, "
            f"not {cfg.positional_embedding_type!r}"
        )
    if cfg.use_qk_norm or cfg.attn_scores_soft_cap > 0:
        return (
            "query/key attribution needs scores bilinear in the residual stream; this model "
            "uses QK normalisation or score soft-capping"
        )
    return None


def _check_supported(context: CircuitContext, head: int) -> None:
    n_heads = context.model.cfg.n_heads
    if not 0 <= head < n_heads:
        raise ValueError(f"head {head} is out of range; layer heads are 0..{n_heads - 1}")
    reason = query_key_unsupported(context.model)
    if reason is not None:
        raise ValueError(reason)
