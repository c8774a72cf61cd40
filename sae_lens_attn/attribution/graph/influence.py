"""Influence, pruning and scores of an attribution graph, as circuit-tracer defines them
(`circuit_tracer.graph`: `normalize_matrix`, `compute_influence`, `prune_graph`,
`compute_graph_scores`), on a graph stored as row blocks rather than one dense matrix.

Rows are targets, columns sources; each row is normalised to `|row| / sum |row|`. A node's
influence is the sum over all paths from it to the root of the products of normalised edge
weights (`w A + w A^2 + ...` with `w` one-hot on the root). Because every edge goes up the
layers, one pass from the top down computes it exactly (`graph_scores`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowBlock:
    """Rows `rows [T, C]` of the targets `targets [T]` over the source nodes `columns [C]`
    (node indices; the other nodes' edges into these targets are zero)."""

    targets: torch.Tensor
    columns: torch.Tensor
    rows: torch.Tensor

    def normalized(self) -> torch.Tensor:
        magnitude = self.rows.abs()
        return magnitude.div_(magnitude.sum(1, keepdim=True).clamp(min=1e-10))


def dense_influence(normalized: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`weights @ (A + A^2 + ...)` for a normalised adjacency `[n, n]` of a DAG (the series
    ends after at most `n` terms), as circuit-tracer's `compute_influence`."""
    current = weights @ normalized
    total = current.clone()
    for _ in range(normalized.shape[0]):
        if not bool(current.any()):
            return total
        current = current @ normalized
        total += current
    raise ValueError("the adjacency has a cycle: influence does not converge")


def find_threshold(scores: torch.Tensor, fraction: float) -> float:
    """The score above which the top scores hold `fraction` of the total (circuit-tracer's
    `find_threshold`)."""
    ordered = scores.sort(descending=True).values
    cumulative = ordered.cumsum(0) / ordered.sum().clamp(min=1e-30)
    index = min(int(torch.searchsorted(cumulative, fraction).item()), len(ordered) - 1)
    return ordered[index].item()


@dataclass(frozen=True)
class Scores:
    """circuit-tracer's graph scores: `replacement` (token influence over token plus error
    influence) and `completeness` (influence-weighted share of incoming edges that come from
    non-error nodes)."""

    replacement: float
    completeness: float


def graph_scores(
    blocks: Sequence[RowBlock],
    n_nodes: int,
    root: int,
    inputs: torch.Tensor,
    errors: torch.Tensor,
    opaque: torch.Tensor | None = None,
) -> tuple[Scores, torch.Tensor]:
    """Scores with `inputs`, `errors` `[n_nodes]` bool marking token and error nodes, and
    the nodes' influence, in one pass down the blocks. Error nodes are leaves (their rows,
    if any, are dropped): passing pruned features as errors gives the scores after
    pruning; error nodes proper have no rows, so with them the influence is `influence`'s.
    `opaque` marks leaves that are neither (MLP SAE features, which circuit-tracer does not
    have): they count as non-error for completeness, but what reaches them is not
    explained by the tokens, so their influence joins the errors' in the replacement
    score's denominator."""
    node_influence = torch.zeros(n_nodes)
    non_error = torch.ones(n_nodes)
    for block in blocks:
        keep = ~errors[block.targets]
        if not bool(keep.any()):
            continue
        targets = block.targets[keep]
        normalized = (
            block.normalized()
            if bool(keep.all())
            else RowBlock(targets, block.columns, block.rows[keep]).normalized()
        )
        weight = node_influence[targets] + (targets == root).float()
        node_influence.index_add_(0, block.columns, weight @ normalized)
        non_error[targets] = 1 - normalized[:, errors[block.columns]].sum(1)
    token = node_influence[inputs].sum()
    error = node_influence[errors].sum()
    if opaque is not None:
        error = error + node_influence[opaque].sum()
    replacement = (token / (token + error).clamp(min=1e-30)).item()
    output = node_influence.clone()
    output[root] += 1.0
    completeness = ((non_error * output).sum() / output.sum()).item()
    return Scores(replacement, completeness), node_influence
