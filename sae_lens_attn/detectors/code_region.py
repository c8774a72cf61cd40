"""The `code_region` detector: features that fire inside a region of Python source
(docstring, comment, string literal, decorator, class body) because of the region, not
because of the local tokens.

The evaluation rows carry a region label per token (`models.region_rows`: Python's
`tokenize` over each corpus file, mapped to tokens through the tokenizer's offsets).
For each live feature and region the AUC of "in the region" as a predictor of "fires"
is compared with two controls (`detectors.region_stats`): a predictor that sees only the
current and previous token (cross-fitted on the other half of the rows), and the same
region's labels shuffled across rows. The feature's family is `in_<region>` for its best
region when all of these hold (`RegionThresholds`, defaults chosen on the synthetic
ground truth of `tests/test_code_region.py`):

- `min_region_fires=20`: it fires at least 20 times on known positions (fewer cannot
  separate a context from a token);
- `min_region_auc=0.8`: the region predicts its firing well;
- `min_region_margin=0.05`: and better than the token-only predictor and than the best
  shuffled region, each by at least 0.05 AUC;
- `min_region_coverage=0.3`: it fires on at least 30% of the region's tokens (a context
  that is on through the region, not one token type inside it).

The token-only predictor is by far the costliest statistic (a sort of every position, per
feature), so it is computed only for the features that pass every other test on their best
region: a feature that fails one of those is no member whatever its tokens say, and its
row says "tokens not tested" (on the embedded model's demo SAEs that is nearly every
feature).

Score: the region's AUC minus the larger control AUC (the shuffled one alone where the
tokens were not tested). Rows carry every region's AUC,
the controls, the share of its firings in the region (precision) and the share of the
region's tokens it fires on (coverage). Without region labels for the given tokens (they
are not the embedded corpus's rows and `regions=` is not given) every row says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from sae_lens_attn.attribution._sae_weights import features_encode_independently
from sae_lens_attn.attribution.heads import sae_head_attribution
from sae_lens_attn.detectors.base import encode_hook_z_columns, feature_index, resolve_layout
from sae_lens_attn.detectors.region_stats import (
    rank_auc,
    region_auc,
    region_counts,
    shuffled_region_auc,
    token_scores,
)
from sae_lens_attn.detectors.results import FamilyRow
from sae_lens_attn.models.code_regions import REGIONS
from sae_lens_attn.sources.hook_z import HookZSource

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.sources.head_layout import HeadLayout

__all__ = ["NAME", "CodeRegionDetector", "RegionThresholds", "region_labels_for"]

NAME = "code_region"
DEFAULT_EVAL_SEQUENCES = 64
DEFAULT_CONTEXT_SIZE = 128
NO_LABELS = (
    "no region labels for these tokens (not rows of the embedded corpus; pass regions= and known=)"
)

# Fires of every feature at once (one byte per position and feature) up to this size,
# for SAEs that encode every feature for any chunk of them (`_chunk_fires`).
ALL_FIRES_BYTES = 256 * 2**20


@dataclass(frozen=True)
class RegionThresholds:
    """The decision thresholds and sampling of `code_region` (reasons in the module docstring)."""

    min_region_fires: float = 20
    min_region_auc: float = 0.8
    min_region_margin: float = 0.05
    min_region_coverage: float = 0.3
    n_region_shuffles: int = 8
    feature_chunk_size: int = 256

    def __post_init__(self) -> None:
        for item in fields(self):
            value = float(getattr(self, item.name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{item.name} must be a finite non-negative number, got {value}")
        for name in ("min_region_auc", "min_region_margin", "min_region_coverage"):
            if getattr(self, name) > 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.n_region_shuffles < 1 or self.feature_chunk_size < 1:
            raise ValueError("n_region_shuffles and feature_chunk_size must be >= 1")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RegionThresholds:
        return cls(
            **{f.name: type(f.default)(options[f.name]) for f in fields(cls) if f.name in options}
        )


def region_labels_for(model: HookedTransformer, tokens: torch.Tensor | None):
    """`(tokens, regions [n, q, R], known [n, q], note)`: the embedded corpus's test rows
    with their labels when `tokens` is None or equals them; else `tokens` unlabelled."""
    from sae_lens_attn.models.region_rows import corpus_region_rows

    tokenizer = getattr(model, "tokenizer", None)
    if tokens is None and tokenizer is None:
        raise ValueError(
            "code_region needs tokens=[batch, pos] with regions= and known= "
            "(the model has no tokenizer to read the embedded corpus with)"
        )
    if tokenizer is not None:
        n, q = (
            (DEFAULT_EVAL_SEQUENCES, min(DEFAULT_CONTEXT_SIZE, model.cfg.n_ctx))
            if tokens is None
            else tokens.shape
        )
        try:
            rows = corpus_region_rows(tokenizer, q, n, "test")
        except ValueError:
            rows = None
        if rows is not None and (tokens is None or torch.equal(rows.tokens, tokens.long().cpu())):
            note = (
                f"{rows.failed_files} of {rows.files} corpus files could not be tokenized by Python"
            )
            return rows.tokens, rows.regions, rows.known, note if rows.failed_files else ""
    unknown = torch.zeros(*tokens.shape, dtype=torch.bool)
    return tokens, torch.zeros(*tokens.shape, len(REGIONS), dtype=torch.bool), unknown, NO_LABELS


@torch.no_grad()
def _hook_z(
    model: HookedTransformer, layout: HeadLayout, tokens: torch.Tensor, batch_size: int = 16
) -> torch.Tensor:
    """`[n, q, n_heads * d_head]` SAE inputs of `tokens [n, q]`: one model pass, which
    every feature chunk then encodes."""
    source = HookZSource(model, layout.layer, layout.heads)
    return torch.cat(
        [
            source.activations(tokens[start : start + batch_size].to(model.cfg.device)).cpu()
            for start in range(0, tokens.shape[0], batch_size)
        ]
    )


@torch.no_grad()
def _fires(
    sae: SAE, layout: HeadLayout, x: torch.Tensor, index: torch.Tensor, threshold: float,
    batch_size: int = 16,
) -> torch.Tensor:
    """`[n, q, F]` bool: where features `index` fire (activation > `threshold`) on SAE
    inputs `x [n, q, d_in]`."""
    device = sae.b_dec.device
    return torch.cat(
        [
            encode_hook_z_columns(sae, x[start : start + batch_size].to(device), layout, index).float().cpu()
            > threshold
            for start in range(0, x.shape[0], batch_size)
        ]
    )


def _chunk_fires(
    sae: SAE, layout: HeadLayout, x: torch.Tensor, index: torch.Tensor, chunk_size: int, threshold: float
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """`(features, fires [n, q, len(features)])` for chunks of `index`. An SAE whose
    features do not encode on their own (TopK, block-diagonal) encodes every feature for
    any chunk, so it encodes once for all chunks when their fires fit in
    `ALL_FIRES_BYTES`."""
    once = not features_encode_independently(sae) and x.shape[0] * x.shape[1] * len(index) <= ALL_FIRES_BYTES
    chunks = index.split(chunk_size)
    if not once:
        yield from ((chunk, _fires(sae, layout, x, chunk, threshold)) for chunk in chunks)
        return
    every = _fires(sae, layout, x, index, threshold)
    yield from zip(chunks, (part.contiguous() for part in every.split(chunk_size, dim=-1)), strict=True)


def region_statistics(
    fires: torch.Tensor,
    tokens: torch.Tensor,
    regions: torch.Tensor,
    known: torch.Tensor,
    n_shuffles: int,
    seed: int = 0,
    thresholds: RegionThresholds | None = None,
) -> dict[str, torch.Tensor]:
    """Per feature: `fires [n, q, F]` bool, `tokens [n, q]`, `regions [n, q, R]`, `known [n, q]`
    -> `auc [F, R]`, `token_auc [F]`, `shuffled_auc [F, R]`, `gain [F]` (AUC of tokens and
    the feature's best region together minus `token_auc`), `precision [F, R]` (share of firings in the region),
    `coverage [F, R]` (share of the region's tokens it fires on), `fires [F]` (on known
    positions).

    The token statistics (`token_auc`, `gain`: a sort of every position per feature, most of
    the detector's time) are computed for every feature, or with `thresholds` only for the
    features that pass every other test of `decide` on their best region; the others get
    NaN there, and `decide` rejects them either way."""
    flat_fires, flat_regions = fires[known], regions[known]
    both = region_counts(flat_fires, flat_regions)  # [F, R]
    n_fires = flat_fires.sum(dim=0).double()
    generator = torch.Generator().manual_seed(seed)
    auc = region_auc(flat_fires, flat_regions)
    stats = {
        "auc": auc,
        "shuffled_auc": shuffled_region_auc(fires, regions, known, n_shuffles, generator),
        "precision": both / n_fires.clamp_min(1)[:, None],
        "coverage": both / flat_regions.sum(dim=0).double().clamp_min(1)[None, :],
        "fires": n_fires,
    }
    tested = torch.ones(len(n_fires), dtype=torch.bool)
    if thresholds is not None:
        tested = _passes_region_tests(stats, thresholds)
    stats["token_auc"] = torch.full_like(n_fires, math.nan)
    stats["gain"] = torch.full_like(n_fires, math.nan)
    index = tested.nonzero().flatten()
    if len(index):
        some = fires[..., index]
        token_auc = rank_auc(token_scores(tokens, some)[known], flat_fires[:, index])
        best = auc[index].argmax(dim=1)
        gain = torch.zeros_like(token_auc)
        for r in best.unique().tolist():  # one extra predictor per feature: its best region
            chosen = best == r
            with_region = token_scores(tokens, some[..., chosen], context=regions[..., r])[known]
            gain[chosen] = rank_auc(with_region, flat_fires[:, index[chosen]]) - token_auc[chosen]
        stats["token_auc"][index], stats["gain"][index] = token_auc, gain
    return stats


def _passes_region_tests(stats: dict[str, torch.Tensor], t: RegionThresholds) -> torch.Tensor:
    """`[F]` bool: passes every test of `decide` that does not need the token statistics."""
    auc, best = stats["auc"].max(dim=1)
    rows = torch.arange(len(best))
    return (
        (stats["fires"] >= t.min_region_fires)
        & (auc >= t.min_region_auc)
        & (auc - stats["shuffled_auc"][rows, best] >= t.min_region_margin)
        & (stats["coverage"][rows, best] >= t.min_region_coverage)
    )


def decide(
    stats: dict[str, torch.Tensor], t: RegionThresholds
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(member [F] bool, best region index [F], margin [F])` from `region_statistics`; a
    feature without token statistics (NaN) is no member, its margin is over the shuffled
    control alone."""
    auc, best = stats["auc"].max(dim=1)
    rows = torch.arange(len(best))
    control = torch.fmax(stats["token_auc"], stats["shuffled_auc"][rows, best])
    margin = auc - control
    member = _passes_region_tests(stats, t) & (auc - stats["token_auc"] >= t.min_region_margin)
    return member, best, margin


class CodeRegionDetector:
    """Region-of-Python-source features (see the module docstring)."""

    name = NAME
    description = "code-region features: fire through a docstring/comment/string/decorator/class body, beyond the tokens"

    def detect(
        self, model: HookedTransformer, sae: SAE, layout: HeadLayout | None = None, **options: Any
    ) -> list[FamilyRow]:
        """One row per feature (all unless `features=`); `tokens [n, q]` with `regions [n,
        q, len(REGIONS)]` and `known [n, q]` bool, or the embedded corpus's test rows."""
        thresholds = RegionThresholds.from_options(options)
        layout = resolve_layout(sae, model, layout)
        index = feature_index(sae, options.get("features"))
        tokens = options.get("tokens")
        tokens = None if tokens is None else torch.as_tensor(tokens).long().cpu()
        if options.get("regions") is not None:
            regions = torch.as_tensor(options["regions"]).bool()
            known = torch.as_tensor(options.get("known", torch.ones(regions.shape[:2]))).bool()
            note = ""
        else:
            tokens, regions, known, note = region_labels_for(model, tokens)
        if (
            regions.shape[:2] != tokens.shape
            or regions.shape[2] != len(REGIONS)
            or known.shape != tokens.shape
        ):
            raise ValueError(
                f"regions must be [n, q, {len(REGIONS)}] and known [n, q] for tokens "
                f"{list(tokens.shape)}, got {list(regions.shape)} and {list(known.shape)}"
            )
        heads = sae_head_attribution(sae, layout.n_heads, index.to(sae.b_dec.device)).cpu()
        head_labels = [layout.head_labels[h] for h in heads.argmax(dim=1).tolist()]  # per feature
        threshold = float(options.get("activation_threshold", 0.0))
        rows: list[FamilyRow] = []
        x = _hook_z(model, layout, tokens)
        for chunk, fires in _chunk_fires(sae, layout, x, index, thresholds.feature_chunk_size, threshold):
            stats = region_statistics(
                fires,
                tokens,
                regions,
                known,
                thresholds.n_region_shuffles,
                int(options.get("seed", 0)),
                thresholds,
            )
            member, best, margin = decide(stats, thresholds)
            live = fires.flatten(0, 1).any(dim=0).tolist()
            for i, feature in enumerate(chunk.tolist()):
                rows.append(
                    _row(
                        feature,
                        head_labels[len(rows)],
                        live[i],
                        stats,
                        i,
                        member[i].item(),
                        int(best[i]),
                        margin[i].item(),
                        note,
                    )
                )
        return rows


def _row(
    feature: int,
    head: str,
    live: bool,
    stats: dict[str, torch.Tensor],
    i: int,
    member: bool,
    best: int,
    margin: float,
    note: str,
) -> FamilyRow:
    if not live:
        return FamilyRow(
            NAME,
            feature,
            None,
            0.0,
            {"live": False, "summary": "not live: never fires on the tokens"},
        )
    region = REGIONS[best]
    auc = stats["auc"][i, best].item()
    shuffled = stats["shuffled_auc"][i, best].item()
    token = stats["token_auc"][i].item()
    tested = math.isfinite(token)
    evidence: dict[str, Any] = {
        "live": True,
        "head": head,
        "region": region,
        "region_auc": {r: stats["auc"][i, j].item() for j, r in enumerate(REGIONS)},
        "token_auc": token if tested else None,
        "shuffled_auc": shuffled,
        "gain_over_tokens": stats["gain"][i].item() if tested else None,
        "precision": stats["precision"][i, best].item(),
        "coverage": stats["coverage"][i, best].item(),
        "fires_on_known": int(stats["fires"][i]),
    }
    if note:
        evidence["notes"] = [note]
    verdict = f"in {region}" if member else f"not a region feature (best: {region})"
    versus = (
        f"vs tokens {token:.2f}, shuffled {shuffled:.2f} "
        f"(tokens and {region} {token + stats['gain'][i].item():.2f})"
        if tested
        else f"vs shuffled {shuffled:.2f} (tokens not tested: it fails a region test)"
    )
    evidence["summary"] = (
        f"{verdict}: AUC {auc:.2f} {versus}; "
        f"{evidence['precision']:.0%} of its firings in {region}, fires on "
        f"{evidence['coverage']:.0%} of its tokens; {head}"
    )
    return FamilyRow(NAME, feature, f"in_{region}" if member else None, margin, evidence)
