"""Token set enrichment analysis (GSEA-style) of logit weights, with p-values.

The enrichment score (ES) of a token set S for one feature is SAELens's tutorial
`sae_lens.tutorial.tsea.calculate_batch_enrichment_scores`: walk the vocabulary from the
most to the least promoted token, add `1/|S|` for a token in S and subtract `1/(V-|S|)`
for one outside; ES is the largest absolute value of that running sum. This is exactly
the two-sample Kolmogorov-Smirnov statistic D between the set's logit weights and the
rest's, so we compute it from ranks (one sort per feature, then per set only the set's own
tokens) rather than by a running sum over the whole vocabulary per set, and take tied
weights together as `scipy.stats.ks_2samp` does (the tutorial orders ties arbitrarily;
without ties the two agree). `direction` is +1 when the extreme of the running sum is
positive (the set sits at the top: promoted) and -1 when negative (suppressed).

p-values (two-sided, per feature and set):
- "ks" (default): the asymptotic Kolmogorov distribution with Stephens's small-sample
  correction, `kstwobign.sf((sqrt(n_e) + 0.12 + 0.11 / sqrt(n_e)) * ES)` with
  `n_e = |S| (V-|S|) / V` (Numerical Recipes' `probks`). scipy's exact `kstwo` gives
  nearly the same numbers but takes ~10 ms per value in the tail: minutes for a whole SAE.
- "permutation": the set's tokens drawn uniformly at random. Under that null the ES does
  not depend on the feature (only ranks matter), so one null of `n_permutations` draws
  per set size serves every feature; `p = (1 + #{null >= ES}) / (1 + n_permutations)`.
Then Benjamini-Hochberg (`scipy.stats.false_discovery_control`) across features x sets.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from sae_lens_attn.attribution.logit_lens import iter_logit_weights

__all__ = [
    "EnrichmentResult",
    "enrichment_scores",
    "ks_pvalues",
    "permutation_null",
    "permutation_pvalues",
    "token_set_enrichment",
]

PValueMethod = Literal["ks", "permutation"]

#: Features per chunk: ranking 128 x 50257 weights takes ~180 MB of scratch per worker.
ENRICHMENT_CHUNK_SIZE = 128


@dataclass(frozen=True)
class EnrichmentResult:
    """Per feature and token set, each `[n_features, n_sets]`: `es` (float64), `direction`
    (+1 promoted / -1 suppressed, int8), `p` and BH-adjusted `q` (float64, NaN when not
    computed)."""

    set_names: list[str]
    es: torch.Tensor
    direction: torch.Tensor
    p: torch.Tensor
    q: torch.Tensor


def _as_index_sets(token_sets: Sequence[Sequence[int] | torch.Tensor], vocab_size: int) -> list[torch.Tensor]:
    sets = []
    for position, ids in enumerate(token_sets):
        index = torch.as_tensor(ids, dtype=torch.long).reshape(-1).unique()
        if index.numel() == 0 or index.numel() >= vocab_size:
            raise ValueError(
                f"token set {position} has {index.numel()} distinct tokens: a set needs "
                f"between 1 and {vocab_size - 1} (the vocabulary size minus one)"
            )
        if index.min() < 0 or index.max() >= vocab_size:
            raise ValueError(f"token set {position} has ids outside 0..{vocab_size - 1}")
        sets.append(index)
    return sets


def _smaller_side(index: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, int]:
    """The set or its complement, whichever is smaller, and the sign of the switch: the
    complement's running sum is the set's negated, so ES is the same."""
    if index.numel() <= vocab_size // 2:
        return index, 1
    mask = torch.ones(vocab_size, dtype=torch.bool)
    mask[index] = False
    return mask.nonzero().flatten(), -1


@dataclass(frozen=True)
class _Ranks:
    """`rank [n, V]` int32: each token's ascending position in its row (ties broken
    arbitrarily). `run_first`, `run_last [n, V]` int32, None when no weights tie: for
    each position, the first / last position of its run of tied weights."""

    rank: np.ndarray
    run_first: np.ndarray | None
    run_last: np.ndarray | None


def _gather_rows(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """`array[r, index[r, i]]` for `[n, V]` array and `[n, s]` index (a flat `np.take`:
    several times faster than `np.take_along_axis`)."""
    n, width = array.shape
    return np.take(array.ravel(), index + np.arange(n, dtype=np.int64)[:, None] * width)


def _ranks(weights: np.ndarray) -> _Ranks:
    """`_Ranks` of `weights [n, V]`. Ties are few (float32 rounding, duplicated
    unembedding columns), so runs are found and written sparsely."""
    n, vocab_size = weights.shape
    order = np.argsort(weights, axis=1)
    positions = np.arange(vocab_size, dtype=np.int32)
    rank = np.empty((n, vocab_size), dtype=np.int32)
    for row in range(n):  # faster than put_along_axis or one flat scatter
        rank[row, order[row]] = positions
    sorted_weights = np.sort(weights, axis=1)
    rows, pos = np.nonzero(sorted_weights[:, 1:] == sorted_weights[:, :-1])  # p ties p + 1
    if rows.size == 0:
        return _Ranks(rank, None, None)
    # consecutive tied pairs in a row form one run, from its first pair's p to its last p + 1
    new_run = np.ones(rows.size, dtype=bool)
    new_run[1:] = (rows[1:] != rows[:-1]) | (pos[1:] != pos[:-1] + 1)
    run = np.cumsum(new_run) - 1
    starts = pos[new_run]
    ends = np.append(pos[:-1][new_run[1:]], pos[-1]) + 1
    run_first = np.broadcast_to(positions, (n, vocab_size)).copy()
    run_last = run_first.copy()
    run_first[rows, pos + 1] = starts[run]
    run_last[rows, pos] = ends[run]
    return _Ranks(rank, run_first, run_last)


def _extremes(ranks: _Ranks, members: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Largest and smallest running sum of one token set, as exact integers (held in
    float64): returns `(top [n] >= 0, bottom [n] <= 0, scale)`, the sums being
    `top / scale` and `bottom / scale`.

    With the set's s tokens at ascending positions `p_0 < ... < p_{s-1}` (from the
    bottom), the walk from the top has the running sum `(p_k - k)/(V-s) - k/s =
    (p_k s - k V) / (s (V-s))` right after passing the k-th of them and `1/s` less right
    before it. A run of tied weights is passed at once; with p = the run's first position
    for "after" (the largest value over the run's set tokens is then at its first one)
    and its last for "before" (the smallest at its last one) the extremes are exact.
    """
    vocab_size, size = ranks.rank.shape[1], members.shape[0]
    positions = np.sort(np.take(ranks.rank, members, axis=1), axis=1)
    first = positions if ranks.run_first is None else _gather_rows(ranks.run_first, positions)
    last = positions if ranks.run_last is None else _gather_rows(ranks.run_last, positions)
    # float64 holds these integers (< 2**53) exactly, and int32 * float skips a cast pass
    k_times_v = np.arange(size, dtype=np.float64) * vocab_size
    after = first * float(size)
    after -= k_times_v
    top = np.maximum(after.max(axis=1), 0.0)
    if last is not first:
        after = last * float(size)
        after -= k_times_v
    bottom = np.minimum(after.min(axis=1) - (vocab_size - size), 0.0)
    return top, bottom, size * (vocab_size - size)


def enrichment_scores(
    weights: torch.Tensor, token_sets: Sequence[Sequence[int] | torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """ES and direction of each token set for each row of `weights [n, V]`.

    Returns `(es [n, n_sets] float64, direction [n, n_sets] int8)`; `es` equals the
    tutorial's `calculate_batch_enrichment_scores(weights, padded_sets).T` without ties
    and `scipy.stats.ks_2samp`'s statistic with or without them.

    One argsort per row serves every set, and each set then costs O(s log s) for its own s
    tokens (or its complement's, if smaller) instead of a running sum over the whole
    vocabulary. Runs on CPU (numpy's SIMD sorts), wherever `weights` live.
    """
    if weights.ndim != 2:
        raise ValueError(f"expected logit weights [n, d_vocab], got shape {list(weights.shape)}")
    n, vocab_size = weights.shape
    sets = _as_index_sets(token_sets, vocab_size)
    ranks = _ranks(weights.detach().float().cpu().numpy())
    es = np.empty((n, len(sets)))
    direction = np.empty((n, len(sets)), dtype=np.int8)
    for j, index in enumerate(sets):
        side, sign = _smaller_side(index, vocab_size)
        top, bottom, scale = _extremes(ranks, side.numpy())
        promoted = top >= -bottom
        es[:, j] = np.where(promoted, top, -bottom) / scale
        direction[:, j] = np.where(promoted, sign, -sign)
    return torch.from_numpy(es), torch.from_numpy(direction)


def ks_pvalues(es: torch.Tensor, set_sizes: Sequence[int], vocab_size: int) -> torch.Tensor:
    """Two-sided asymptotic KS p-values (Stephens's correction) of `es [n, n_sets]`."""
    from scipy.stats import kstwobign

    sizes = np.asarray(set_sizes, dtype=np.float64)
    root = np.sqrt(sizes * (vocab_size - sizes) / vocab_size)
    scaled = (root + 0.12 + 0.11 / root)[None, :] * es.double().numpy()
    return torch.from_numpy(np.clip(kstwobign.sf(scaled), 0.0, 1.0))


def permutation_null(
    set_size: int, vocab_size: int, n_permutations: int = 1000, seed: int = 0, batch: int = 100
) -> torch.Tensor:
    """`[n_permutations]` ES of random token sets of `set_size` (ascending)."""
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    size = min(set_size, vocab_size - set_size)  # ES of a set equals its complement's
    generator = torch.Generator().manual_seed(seed)
    null = []
    for start in range(0, n_permutations, batch):
        rows = min(batch, n_permutations - start)
        # a random set's ranks: `size` distinct positions of a random permutation
        ranks = torch.rand(rows, vocab_size, generator=generator).argsort(dim=1).int().numpy()
        top, bottom, scale = _extremes(_Ranks(ranks, None, None), np.arange(size))
        null.append(torch.from_numpy(np.maximum(top, -bottom) / scale))
    return torch.cat(null).sort().values


def permutation_pvalues(es: torch.Tensor, nulls: Sequence[torch.Tensor]) -> torch.Tensor:
    """`(1 + #{null >= es}) / (1 + n)` per column of `es [n, n_sets]`, one null per set."""
    columns = []
    for j, null in enumerate(nulls):
        # a tiny tolerance so that an ES equal to a null value up to rounding counts as >=
        below = torch.searchsorted(null, es[:, j].double() - 1e-12, right=False)
        columns.append((1.0 + (null.numel() - below).double()) / (1.0 + null.numel()))
    return torch.stack(columns, dim=1)


def token_set_enrichment(
    directions: torch.Tensor,
    W_U: torch.Tensor,
    token_sets: dict[str, Sequence[int] | torch.Tensor],
    method: PValueMethod = "ks",
    n_permutations: int = 1000,
    chunk_size: int = ENRICHMENT_CHUNK_SIZE,
    seed: int = 0,
    progress: bool = False,
) -> EnrichmentResult:
    """ES, direction, p and BH q-values of every token set for `directions @ W_U`.

    `directions [n, d_model]`, `W_U [d_model, V]`, `token_sets {name: token ids}` ->
    `EnrichmentResult` with `[n, n_sets]` tensors; BH runs over all n x n_sets tests.
    """
    from scipy.stats import false_discovery_control
    from tqdm.auto import tqdm

    if method not in ("ks", "permutation"):
        raise ValueError(f"method must be 'ks' or 'permutation', got {method!r}")
    if not token_sets:
        raise ValueError("no token sets given: pass at least one {name: [token ids]}")
    names = list(token_sets)
    vocab_size = W_U.shape[1]
    index_sets = _as_index_sets([token_sets[name] for name in names], vocab_size)
    chunks = iter_logit_weights(directions, W_U, chunk_size)
    # numpy's sorts release the GIL: `workers` chunks are scored at once while the next
    # chunk's logit weights are computed; at most `workers + 1` wait, so memory stays bounded
    workers = max(1, torch.get_num_threads())
    scored = []
    bar = tqdm(total=directions.shape[0], desc="enrichment", unit="feature", disable=not progress)
    with ThreadPoolExecutor(workers) as pool, bar:
        pending: deque[Future] = deque()
        for _, weights in chunks:
            pending.append(pool.submit(enrichment_scores, weights.cpu(), index_sets))
            while len(pending) > workers:
                scored.append(pending.popleft().result())
                bar.update(scored[-1][0].shape[0])
        while pending:
            scored.append(pending.popleft().result())
            bar.update(scored[-1][0].shape[0])
    empty = torch.empty(0, len(names), dtype=torch.float64)
    es = torch.cat([part[0] for part in scored]) if scored else empty
    direction = torch.cat([part[1] for part in scored]) if scored else empty.to(torch.int8)
    sizes = [index.numel() for index in index_sets]
    if method == "ks":
        p = ks_pvalues(es, sizes, vocab_size)
    else:
        nulls = {size: permutation_null(size, vocab_size, n_permutations, seed) for size in set(sizes)}
        p = permutation_pvalues(es, [nulls[size] for size in sizes])
    q = (
        torch.from_numpy(false_discovery_control(p.numpy().ravel(), method="bh")).reshape(p.shape)
        if p.numel()
        else p.clone()
    )
    return EnrichmentResult(set_names=names, es=es, direction=direction, p=p, q=q)
