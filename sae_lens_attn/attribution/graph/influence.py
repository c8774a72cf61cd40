"""Influence, pruning and scores of an attribution graph, as circuit-tracer defines them
(`circuit_tracer.graph`: `normalize_matrix`, `compute_influence`, `prune_graph`,
`compute_graph_scores`), on a graph stored as row blocks rather than one dense matrix.

Rows are targets, columns sources; each row is normalised to `|row| / sum |row|`. A node's
influence is the sum over all paths from it to the root of the products of normalised edge
weights (`w A + w A^2 + ...` with `w` one-hot on the root). Because every edge goes up the
layers, one pass from the top down computes it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RowBlock:
    """Rows of the targets `targets [T]` (node indices) over the first `rows.shape[1]`
    nodes."""

    targets: torch.Tensor
    rows: torch.Tensor

    def normalized(self) -> torch.Tensor:
        magnitude = self.rows.abs()
        return magnitude / magnitude.sum(1, keepdim=True).clamp(min=1e-10)


def influence(
    blocks: Sequence[RowBlock], n_nodes: int, root: int, skip: torch.Tensor | None = None
) -> torch.Tensor:
    """`[n_nodes]`: each node's influence on `root`. `blocks` run from the root down (every
    target's influence is final before its row spreads it); targets in `skip [n_nodes]`
    bool are treated as leaves (their rows are dropped)."""
    result = torch.zeros(n_nodes)
    for block in blocks:
        weight = result[block.targets] + (block.targets == root).float()
        if skip is not None:
            weight = weight * ~skip[block.targets]
        if bool((weight != 0).any()):
            width = block.rows.shape[1]
            result[:width] += weight @ block.normalized()
    return result


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
) -> Scores:
    """Scores with `inputs`, `errors` `[n_nodes]` bool marking token and error nodes. Error
    nodes are leaves (their rows, if any, are dropped): passing pruned features as errors
    gives the scores after pruning."""
    node_influence = influence(blocks, n_nodes, root, skip=errors)
    token = node_influence[inputs].sum()
    error = node_influence[errors].sum()
    replacement = (token / (token + error).clamp(min=1e-30)).item()
    output = node_influence.clone()
    output[root] += 1.0
    non_error = torch.ones(n_nodes)
    for block in blocks:
        normalized = block.normalized()
        width = normalized.shape[1]
        keep = ~errors[block.targets]
        share = normalized[:, errors[:width]].sum(1)
        non_error[block.targets[keep]] = 1 - share[keep]
    completeness = ((non_error * output).sum() / output.sum()).item()
    return Scores(replacement, completeness)
