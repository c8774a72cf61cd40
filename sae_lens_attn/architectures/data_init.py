"""Initialise an SAE from a sample of its training inputs: `b_dec` and decoder directions.

SAELens 6 initialises every SAE without data (kaiming-uniform decoder rows, encoder =
decoder transpose, `b_dec` zero); its 5.x `b_dec_init_method` is gone. These options put
data back in, per head for per-head SAEs:

- **b_dec**: "zeros" (SAELens's), "mean" or "geometric_median" of the sample.
- **decoder**: "kaiming" (SAELens's draw, kept) or "active_subspace": each decoder row is
  a Gaussian draw inside the principal subspace that holds `variance` (default 99.9%) of
  the sample's spread around `b_dec`, as in arXiv 2508.16929 (which cut the dead
  features of a 1M-feature attention SAE from 87% to under 1%); or "data_samples": each
  decoder row is the direction of one sampled token's input minus `b_dec` (distinct
  tokens while the sample has enough, each group's own), so every feature starts pointing
  at a place where the data is; or "kmeans": the rows are the centroids of a spherical
  k-means of the sample's directions (minus `b_dec`), each group's own, so every row
  starts as the best-aligned row of a share of the sample's tokens (its cluster) instead
  of crowding where tokens repeat. Row norms stay what the architecture chose
  (`decoder_init_norm`).
- The encoder is always the decoder's transpose afterwards (SAELens's default, kept).

"Per head" follows the SAE's own input space. A block-diagonal SAE (anything with
`W_dec_blocks [n_heads, m, d_head]`) is one small SAE per head, so every statistic is
taken on each head's `d_head` slice alone: the per-head mean is the slice of the joint
mean, but the per-head geometric median and subspace differ from the joint ones (a
joint median weighs a token by its distance over all heads). A dense SAE reads the whole
`d_in` vector, so its statistics are joint, as in the paper and SAELens 5.x.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from sae_lens_attn.architectures.init_options import SAEInit

__all__ = [
    "SAEInit",
    "geometric_median",
    "initialise_from_sample",
    "principal_subspace",
    "spherical_kmeans",
]


@torch.no_grad()
def geometric_median(points: torch.Tensor, max_iter: int = 500, tol: float = 1e-9) -> torch.Tensor:
    """Weiszfeld's algorithm: `points [..., n, d]` -> `[..., d]`, the point minimising the
    sum of Euclidean distances to the `n` points (for each leading index separately).

    Computed in float64, started from the mean; a point that coincides with the iterate
    gets a large finite weight instead of an infinite one."""
    x = points.double()
    median = x.mean(-2)
    scale = x.abs().amax().clamp_min(1e-300)
    for _ in range(max_iter):
        distance = (x - median.unsqueeze(-2)).norm(dim=-1).clamp_min(1e-12 * scale)
        weights = 1.0 / distance
        new = (weights.unsqueeze(-1) * x).sum(-2) / weights.sum(-1, keepdim=True)
        done = bool(((new - median).norm(dim=-1) <= tol * scale).all())
        median = new
        if done:
            break
    return median.to(points.dtype)


@torch.no_grad()
def principal_subspace(centred: torch.Tensor, variance: float) -> tuple[torch.Tensor, float]:
    """`(basis [d, r], held)`: the top-r principal directions of `centred [n, d]` (rows
    already centred) for the smallest r whose share `held` of the total squared norm
    reaches `variance`."""
    _, singular, vh = torch.linalg.svd(centred.double(), full_matrices=False)
    energy = singular.square()
    total = float(energy.sum())
    if total == 0:
        raise ValueError("the sample has no spread around b_dec: cannot find its active subspace")
    cumulative = energy.cumsum(0) / total
    rank = (
        int(torch.searchsorted(cumulative, torch.tensor(variance, dtype=cumulative.dtype) - 1e-12))
        + 1
    )
    rank = min(rank, energy.numel())
    return vh[:rank].T, float(cumulative[rank - 1])


KMEANS_ITERATIONS = 20  # Lloyd steps of the "kmeans" decoder initialisation


def _groups(sae: nn.Module) -> int:
    """Heads for a block-diagonal SAE (statistics per head), else 1 (joint)."""
    return sae.cfg.n_heads if hasattr(sae, "W_dec_blocks") else 1


def _decoder(sae: nn.Module) -> torch.Tensor:
    """The decoder as `[groups, rows per group, group width]` (a view for dense SAEs)."""
    if hasattr(sae, "W_dec_blocks"):
        return sae.W_dec_blocks.data
    return sae.W_dec.data.unsqueeze(0)


def _point_rows(decoder: torch.Tensor, norms: torch.Tensor, group: int, directions: torch.Tensor) -> None:
    """Decoder rows of `group` (`decoder [G, m, w]`) pointed along `directions [m, w]` (any
    norm), each keeping its norm from `norms [G, m, 1]`."""
    unit = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    decoder[group].copy_((unit * norms[group].double()).to(decoder.dtype))


@torch.no_grad()
def initialise_from_sample(
    sae: nn.Module, sample: torch.Tensor, init: SAEInit, generator: torch.Generator | None = None
) -> dict[str, Any]:
    """Set `sae`'s `b_dec` and decoder (then encoder = decoder transpose) from `sample
    [n_tokens, d_in]`, the inputs the SAE will train on, in place.

    Returns what was done, for the SAE's metadata: the options, the sample size and, for
    "active_subspace", each group's subspace rank and the share of variance it holds."""
    d_in = sae.cfg.d_in
    if sample.ndim != 2 or sample.shape[1] != d_in:
        raise ValueError(
            f"sample must have shape [n_tokens, {d_in}] (d_in), got {list(sample.shape)}"
        )
    if sample.shape[0] < 2:
        raise ValueError(
            f"the initialisation sample needs at least 2 tokens, got {sample.shape[0]}"
        )
    n_groups = _groups(sae)
    x = (
        sample.detach()
        .to("cpu", torch.float64)
        .unflatten(-1, (n_groups, d_in // n_groups))
        .transpose(0, 1)
    )  # [G, n, w]
    if init.b_dec == "mean":
        centre = x.mean(1)
    elif init.b_dec == "geometric_median":
        centre = geometric_median(x)
    else:
        centre = x.new_zeros(n_groups, x.shape[-1])
    report: dict[str, Any] = {**asdict(init), "sample_tokens": int(sample.shape[0])}
    sae.b_dec.data.copy_(centre.flatten().to(sae.b_dec.dtype))
    if init.decoder == "active_subspace":
        report.update(
            _draw_in_active_subspace(sae, x - centre.unsqueeze(1), init.variance, generator)
        )
    elif init.decoder == "data_samples":
        _draw_from_samples(sae, x - centre.unsqueeze(1), generator)
    elif init.decoder == "kmeans":
        report.update(_kmeans_centroids(sae, x - centre.unsqueeze(1), generator))
    _encoder_from_decoder(sae)
    return report


def _draw_in_active_subspace(
    sae: nn.Module, centred: torch.Tensor, variance: float, generator: torch.Generator | None
) -> dict[str, Any]:
    """Decoder rows of each group redrawn inside its active subspace, row norms kept."""
    decoder = _decoder(sae)
    norms = decoder.norm(dim=-1, keepdim=True)
    ranks, held = [], []
    for group in range(decoder.shape[0]):
        basis, share = principal_subspace(centred[group], variance)
        draws = torch.randn(
            decoder.shape[1], basis.shape[1], generator=generator, dtype=torch.float64
        )
        _point_rows(decoder, norms, group, draws @ basis.T)
        ranks.append(basis.shape[1])
        held.append(share)
    return {"subspace_rank": ranks, "subspace_variance_held": held}


def _draw_from_samples(
    sae: nn.Module, centred: torch.Tensor, generator: torch.Generator | None
) -> None:
    """Decoder rows of each group set to the directions of sampled rows of `centred [G,
    n, w]` (without replacement while n allows, a token at zero distance skipped), row
    norms kept."""
    decoder = _decoder(sae)
    norms = decoder.norm(dim=-1, keepdim=True)
    rows_per_group = decoder.shape[1]
    for group in range(decoder.shape[0]):
        points = centred[group]
        points = points[points.norm(dim=-1) > 0]
        if len(points) == 0:
            raise ValueError("the sample has no spread around b_dec: cannot draw decoder rows from it")
        order = torch.cat(
            [
                torch.randperm(len(points), generator=generator)
                for _ in range(-(-rows_per_group // len(points)))
            ]
        )[:rows_per_group]
        _point_rows(decoder, norms, group, points[order])


@torch.no_grad()
def spherical_kmeans(
    points: torch.Tensor,
    n_centres: int,
    generator: torch.Generator | None = None,
    iterations: int = KMEANS_ITERATIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means of the directions of `points [n, w]` (rows of norm 0 dropped):
    `(centres [n_centres, w] of norm 1, sizes [n_centres])`, the cluster sizes of the last
    assignment (each point to the centre of largest cosine).

    Seeded by k-means++ on the cosine distance (a direction already taken is not drawn
    again while others are left), then `iterations` Lloyd steps; a centre left without
    points moves to the point worst served. Needs at least `n_centres` points."""
    unit = points[points.norm(dim=-1) > 0]
    if len(unit) < n_centres:
        raise ValueError(
            f"k-means of {n_centres} centres needs at least {n_centres} sampled tokens with "
            f"spread around b_dec, got {len(unit)}: draw more (--init-batches)"
        )
    unit = unit / unit.norm(dim=-1, keepdim=True)
    centres = _kmeans_plus_plus(unit, n_centres, generator)
    for _ in range(iterations):
        best = (unit @ centres.T).max(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, best.indices, unit)
        sizes = torch.bincount(best.indices, minlength=n_centres)
        empty = (sizes == 0).nonzero().flatten()
        centres = sums / sums.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        if len(empty):
            centres[empty] = unit[best.values.argsort()[: len(empty)]]
    sizes = torch.bincount((unit @ centres.T).argmax(dim=1), minlength=n_centres)
    return centres, sizes


def _kmeans_plus_plus(
    unit: torch.Tensor, n_centres: int, generator: torch.Generator | None
) -> torch.Tensor:
    """`[n_centres, w]` seeds from the unit rows `unit [n, w]`: each next seed drawn with
    probability proportional to the squared cosine distance to the nearest seed so far
    (uniformly once every row coincides with a seed)."""
    chosen = [int(torch.randint(len(unit), (1,), generator=generator))]
    nearest = unit @ unit[chosen[0]]
    for _ in range(n_centres - 1):
        weights = (1 - nearest).clamp_min(0).square()
        if float(weights.sum()) <= 0:
            weights = torch.ones_like(weights)
        chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
        nearest = torch.maximum(nearest, unit @ unit[chosen[-1]])
    return unit[chosen].clone()


def _kmeans_centroids(
    sae: nn.Module, centred: torch.Tensor, generator: torch.Generator | None
) -> dict[str, Any]:
    """Decoder rows of each group set to the spherical k-means centroids of `centred [G,
    n, w]`, row norms kept; reports each group's smallest cluster."""
    decoder = _decoder(sae)
    norms = decoder.norm(dim=-1, keepdim=True)
    smallest = []
    for group in range(decoder.shape[0]):
        centres, sizes = spherical_kmeans(centred[group].float(), decoder.shape[1], generator)
        _point_rows(decoder, norms, group, centres)
        smallest.append(int(sizes.min()))
    return {"kmeans_smallest_cluster": smallest}


def _encoder_from_decoder(sae: nn.Module) -> None:
    """Encoder = decoder transpose, block by block or dense (where the SAE has one)."""
    if hasattr(sae, "W_enc_blocks"):
        sae.W_enc_blocks.data.copy_(sae.W_dec_blocks.data.transpose(1, 2))
    elif isinstance(getattr(sae, "W_enc", None), nn.Parameter):
        sae.W_enc.data.copy_(sae.W_dec.data.T)
