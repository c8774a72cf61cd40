"""Source signatures: where each feature's DFA mass sits relative to its destination.

An attention feature's pre-activation is a sum over source positions (DFA,
`sae_lens_attn.attribution.dfa`). Where that sum's positive mass sits relative to the
destination `q` separates the attention feature families mechanically. Every source
position `k <= q` of a destination falls into exactly one category (first match wins):

    start             k = 0 < q (attention sinks live there; shown apart, never a class)
    current           k = q                                  (offset 0)
    previous          k = q - 1                              (offset -1)
    same_token        token[k] == token[q]                   (earlier same token)
    induction_target  token[k - 1] == token[q]               (after an earlier copy of token[q])
    near              q - k <= near_window                   (near window)
    far               everything else

One model pass over the evaluation tokens (stopped after the SAE's layer) yields hook_z,
the attention pattern and the values; the SAE encodes every position once. Per feature,
the top `n_examples` sequences (by their maximum activation) give the examples: the DFA at
each example's maximum is split into the categories above, and the source with the most
DFA gives the example's *key token* (the token the feature reads). The feature's token set
is the `token_set_size` most frequent key tokens. Firing is then counted on the whole
corpus under conditions the detectors test (current / previous token in the set, repeat
or first occurrence, distance to the latest set token, spread over documents).

`source_signatures` keeps the last result, so the five source-signature detectors and the
taxonomy that run on the same model, SAE, tokens and options share one pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.attribution.dfa import dfa_hook_names, site_dfa
from sae_lens_attn.column_counts import column_counts
from sae_lens_attn.detectors.base import encode_hook_z
from sae_lens_attn.runtime import release_freed_memory

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.sources.head_layout import HeadLayout

__all__ = [
    "CATEGORIES",
    "CATEGORY_LABELS",
    "SignatureOptions",
    "SourceSignatures",
    "source_categories",
    "source_signatures",
]

CATEGORIES = ("previous", "current", "same_token", "induction_target", "near", "far", "start")
CATEGORY_LABELS = {
    "previous": "-1",
    "current": "0",
    "same_token": "earlier same token",
    "induction_target": "induction target",
    "near": "near window",
    "far": "far",
    "start": "position 0",
}
_NONE = len(CATEGORIES)  # k > q: no source


@dataclass(frozen=True)
class SignatureOptions:
    """How the signature pass samples and counts (not the detectors' decision thresholds).

    `activation_threshold`: a feature fires where its activation exceeds it.
    `n_examples`: top sequences per feature whose maxima give the DFA examples (16: enough
    for a stable mean share, few enough that a feature firing in a handful of documents
    still gets a signature). `token_set_size`: at most this many key tokens form a
    feature's token set ("a consistent token or small token set"). `near_window`: sources
    at distance 2..near_window are "near" (8 tokens: a short phrase or a line of code).
    `max_context`: distances to the latest set token are counted up to this (32; beyond it
    a position counts as outside any local context).
    """

    activation_threshold: float = 0.0
    n_examples: int = 16
    token_set_size: int = 4
    near_window: int = 8
    max_context: int = 32
    batch_size: int = 16
    feature_chunk_size: int = 256

    def __post_init__(self) -> None:
        for name in ("n_examples", "token_set_size", "near_window", "max_context", "batch_size",
                     "feature_chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not torch.isfinite(torch.tensor(float(self.activation_threshold))):
            raise ValueError(f"activation_threshold must be finite, got {self.activation_threshold}")

    @classmethod
    def from_options(cls, options: dict) -> SignatureOptions:
        """The fields present in a detector's keyword options."""
        return cls(**{f.name: options[f.name] for f in fields(cls) if f.name in options})


COUNTED = ("current", "previous", "repeat", "first", "seen")  # conditions counted on the corpus


@dataclass
class SourceSignatures:
    """Per analysed feature (`features [F]`, in that order):

    `live [F]`: fires on the tokens and has a nonzero decoder row; `fires [F]`: firing
    positions; `positions`: positions in the corpus; `dfa_share [F, len(CATEGORIES)]`: mean
    over examples of the share of positive DFA per category; `effective_sources [F]`: mean
    participation ratio `(sum p)^2 / sum p^2` of the positive DFA over source positions;
    `n_examples [F]`; `token_set [F, S]` (-1 padded) and `token_consistency [F]` (share of
    examples whose key token is in the set); `condition_fires` / `condition_tests
    {name: [F]}` for `COUNTED` (`current`: token[q] in the set, `previous`: token[q-1] in
    it, `repeat` / `first`: token[q] in the set and seen / not seen earlier in the row,
    `seen`: token[q], whatever it is, occurred earlier in the row) and `condition_mass`
    (activation summed where it fires and the condition holds; `mass [F]`: summed over all
    its firing positions);
    `distance_fires` / `distance_tests [F, max_context + 2]` by distance from q to the
    latest set token at or before q (last column: none within max_context);
    `document_share [F]` (share of rows where it fires), `document_coverage [F]` (mean,
    over those rows, of the share of positions from its first firing to the end that
    fire), `mean_run_length [F]`; `top_example [F, 3]` (row, position, activation of the
    highest activation).
    """

    features: torch.Tensor
    live: torch.Tensor
    fires: torch.Tensor
    positions: int
    dfa_share: torch.Tensor
    effective_sources: torch.Tensor
    n_examples: torch.Tensor
    token_set: torch.Tensor
    token_consistency: torch.Tensor
    condition_fires: dict[str, torch.Tensor]
    condition_tests: dict[str, torch.Tensor]
    condition_mass: dict[str, torch.Tensor]
    mass: torch.Tensor
    distance_fires: torch.Tensor
    distance_tests: torch.Tensor
    document_share: torch.Tensor
    document_coverage: torch.Tensor
    mean_run_length: torch.Tensor
    top_example: torch.Tensor

    def share(self, *categories: str) -> torch.Tensor:
        """`[F]`: summed mean DFA share of the named categories."""
        return self.dfa_share[:, [CATEGORIES.index(c) for c in categories]].sum(dim=1)

    def rate(self, condition: str) -> torch.Tensor:
        """`[F]`: firing rate where `condition` holds (0 where it never holds)."""
        tests = self.condition_tests[condition]
        return torch.where(tests > 0, self.condition_fires[condition] / tests.clamp_min(1), 0.0)

    def precision(self, condition: str) -> torch.Tensor:
        """`[F]`: share of the feature's activation mass (activations summed over its firing
        positions) where `condition` holds. Weighted by activation, so the weak firings
        around a feature's real trigger count for little."""
        mass = self.condition_mass[condition]
        return torch.where(self.mass > 0, mass / self.mass.clamp_min(torch.finfo(mass.dtype).tiny), 0.0)

    def row(self, feature: int) -> int:
        """Index of `feature` in `features`."""
        found = (self.features == feature).nonzero()
        if not len(found):
            raise KeyError(f"feature {feature} was not analysed")
        return int(found[0, 0])


def source_categories(tokens: torch.Tensor, near_window: int) -> torch.Tensor:
    """`[batch, q, k]` int8 category index (`CATEGORIES`, `len(CATEGORIES)` for k > q) of
    every (destination, source) pair of `tokens [batch, pos]`."""
    n = tokens.shape[1]
    q = torch.arange(n)[:, None]
    k = torch.arange(n)[None, :]
    same = tokens[:, :, None] == tokens[:, None, :]  # [b, q, k]
    after_copy = torch.zeros_like(same)
    after_copy[:, :, 1:] = same[:, :, :-1]  # token[k - 1] == token[q]
    out = torch.full(same.shape, CATEGORIES.index("far"), dtype=torch.int8)
    order = [  # last assignment wins: reverse of the docstring's priority
        ((q - k <= near_window).expand_as(same), "near"),
        (after_copy, "induction_target"),
        (same, "same_token"),
        ((k == q - 1).expand_as(same), "previous"),
        ((k == 0) & (q > 0), "start"),
        ((k == q).expand_as(same), "current"),
    ]
    for mask, name in order:
        out[mask.expand_as(same)] = CATEGORIES.index(name)
    out[(k > q).expand_as(same)] = _NONE
    return out


@dataclass(frozen=True)
class _Pass:
    """What one model pass over the corpus keeps: SAE input `x [n, q, d_in]`, the layer's
    `pattern [n, n_model_heads, q, k]` and `v [n, k, n_kv_heads, d_head]`."""

    x: torch.Tensor
    pattern: torch.Tensor
    v: torch.Tensor


@torch.no_grad()
def _model_pass(model: HookedTransformer, layout: HeadLayout, tokens: torch.Tensor, batch_size: int,
                device: torch.device) -> _Pass:
    pattern_name, v_name = dfa_hook_names(layout.layer)
    names = [layout.hook_name, pattern_name, v_name]
    xs, patterns, vs = [], [], []
    for start in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(
            tokens[start : start + batch_size].to(model.cfg.device), names_filter=names,
            stop_at_layer=layout.layer + 1,
        )
        xs.append(layout.select(cache[layout.hook_name]).to(device))
        patterns.append(cache[pattern_name].to(device))
        vs.append(cache[v_name].to(device))
    return _Pass(torch.cat(xs), torch.cat(patterns), torch.cat(vs))


def _token_sets(keys: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Most frequent key tokens: `keys [F, E]` (-1 = no example) -> `(set [F, size]`
    (-1 padded), `consistency [F]` = share of examples whose key is in the set)."""
    valid = keys >= 0
    counts = ((keys[:, :, None] == keys[:, None, :]) & valid[:, None, :]).sum(dim=2)
    counts = counts.masked_fill(~valid, -1)
    chosen = torch.full((keys.shape[0], size), -1, dtype=torch.long)
    covered = torch.zeros_like(valid)
    for slot in range(size):
        best = counts.max(dim=1)
        token = keys.gather(1, best.indices[:, None])
        ok = best.values > 0
        chosen[:, slot] = torch.where(ok, token[:, 0], -1)
        hit = (keys == token) & ok[:, None]
        covered |= hit
        counts = counts.masked_fill(hit, -1)
    consistency = torch.where(valid.any(1), covered.sum(1) / valid.sum(1).clamp_min(1), 0.0)
    return chosen, consistency


def _count_true(mask: torch.Tensor) -> torch.Tensor:
    """`mask [..., F]` bool -> how many True per feature `[F]` (int64); torch's own sum of a
    bool tensor over several dimensions was 8x slower (71 against 9 ms at [256, 128, 256],
    2 threads, AVX2 EPYC)."""
    return column_counts(mask.reshape(-1, mask.shape[-1])).long()


def _count(mask: torch.Tensor, fires: torch.Tensor, mass: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`mask, fires, mass [n, q, F]` -> (fires where mask, positions where mask, mass where
    mask) `[F]`."""
    both = mask & fires
    return _count_true(both).double(), _count_true(mask).double(), (mass * both).sum(dim=(0, 1)).double()


def _running_max(values: torch.Tensor) -> torch.Tensor:
    """`values [n, q, F]` -> its running maximum over q, in place: `cummax(dim=1)`, which
    on CPU is several times slower along a middle dimension than q maxima of `[n, F]`."""
    for q in range(1, values.shape[1]):
        torch.maximum(values[:, q], values[:, q - 1], out=values[:, q])
    return values


def _chunk_statistics(
    sae: SAE, layout: HeadLayout, run: _Pass, tokens: torch.Tensor, categories: torch.Tensor,
    seen: torch.Tensor, acts: torch.Tensor, feature_ids: torch.Tensor, options: SignatureOptions,
) -> dict[str, torch.Tensor]:
    """All statistics of one feature chunk: `acts [n, q, F]` its activations."""
    n, q_len, n_feat = acts.shape
    fires = acts > options.activation_threshold
    best, dest = acts.masked_fill(~fires, -torch.inf).max(dim=1)  # [n, F]
    dest = torch.where(fires.any(dim=1), dest, 0)
    n_ex = min(options.n_examples, n)
    top = best.topk(n_ex, dim=0)  # [E, F]
    # The examples as sites (row, feature, destination), each feature's in row order, so
    # that its key tokens are met in corpus order; DFA is computed at these sites only.
    site_rows, order = top.indices.sort(dim=0)  # [E, F]
    valid = torch.isfinite(top.values.gather(0, order))  # the feature fires in that row
    site_dest = dest.gather(0, site_rows)
    device = run.pattern.device
    features = feature_ids[None].expand(n_ex, -1)
    by_source = site_dfa(sae, run.pattern, run.v, site_rows.flatten().to(device), features.flatten().to(device),
                         site_dest.flatten().to(device), layout).by_source_head.sum(dim=-1)
    by_source = by_source.float().cpu().view(n_ex, n_feat, -1)  # [E, F, k]
    category = categories[site_rows, site_dest].long()  # [E, F, k]
    positive = by_source.clamp_min(0)
    bins = torch.zeros(n_ex, n_feat, len(CATEGORIES) + 1).scatter_add_(2, category, positive)[..., :-1]
    total = bins.sum(dim=2)
    usable = valid & (total > 0)
    weight = usable.float()
    shares = bins / total.clamp_min(torch.finfo(total.dtype).tiny)[..., None]
    n_used = weight.sum(dim=0)
    dfa_share = (shares * weight[..., None]).sum(dim=0) / n_used.clamp_min(1)[:, None]
    ratio = total**2 / positive.pow(2).sum(dim=2).clamp_min(torch.finfo(total.dtype).tiny)
    effective = (ratio * weight).sum(dim=0) / n_used.clamp_min(1)

    key_position = by_source.argmax(dim=2)  # [E, F]
    keys = tokens[site_rows, key_position].masked_fill(~usable, -1)
    token_set, consistency = _token_sets(keys.T, options.token_set_size)

    in_set = tokens[:, :, None] == token_set[:, 0]  # [n, q, F]; slot by slot, no [n, q, F, S]
    for slot in range(1, token_set.shape[1]):
        in_set |= tokens[:, :, None] == token_set[:, slot]
    prev_in_set = torch.zeros_like(in_set)
    prev_in_set[:, 1:] = in_set[:, :-1]
    stats: dict[str, torch.Tensor] = {}
    mass = acts.clamp_min(0) * fires
    stats["mass"] = mass.sum(dim=(0, 1)).double()
    for name, mask in (("current", in_set), ("previous", prev_in_set),
                       ("repeat", in_set & seen[..., None]), ("first", in_set & ~seen[..., None]),
                       ("seen", seen[..., None].expand_as(fires))):
        stats[f"fires_{name}"], stats[f"tests_{name}"], stats[f"mass_{name}"] = _count(mask, fires, mass)

    positions = torch.arange(q_len, dtype=torch.int32)[None, :, None]  # int32: half the traffic
    latest = _running_max(torch.where(in_set, positions, -1))
    distance = torch.where(latest >= 0, positions - latest, options.max_context + 1)
    width = options.max_context + 2
    cell = (distance.clamp(max=width - 1) + torch.arange(n_feat, dtype=torch.int32) * width).flatten()  # (feature, distance)
    stats["distance_tests"] = torch.bincount(cell, minlength=n_feat * width).double().view(n_feat, width)
    stats["distance_fires"] = torch.bincount(cell[fires.flatten()], minlength=n_feat * width).double().view(
        n_feat, width)

    fired_rows = fires.any(dim=1)  # [n, F]
    onset = fires.view(torch.uint8).argmax(dim=1)  # the first firing
    coverage = fires.sum(dim=1) / (q_len - onset).clamp_min(1)
    stats["document_share"] = fired_rows.float().mean(dim=0)
    stats["document_coverage"] = (coverage * fired_rows).sum(dim=0) / fired_rows.sum(dim=0).clamp_min(1)
    starts = fires.clone()
    starts[:, 1:] &= ~fires[:, :-1]
    n_fires = _count_true(fires)
    stats["mean_run_length"] = n_fires / _count_true(starts).clamp_min(1)
    stats["fires"] = n_fires.double()
    top_row = top.indices[0]
    stats["top_example"] = torch.stack(
        [top_row.double(), dest[top_row, torch.arange(n_feat)].double(), top.values[0].double()], dim=1)
    stats.update(dfa_share=dfa_share, effective_sources=effective, n_examples=n_used.long(),
                 token_set=token_set, token_consistency=consistency)
    return stats


def _decoder_nonzero(sae: SAE, layout: HeadLayout, index: torch.Tensor) -> torch.Tensor:
    """`[F]` bool: the feature's decoder row is not all zeros (read off blocks if any)."""
    from sae_lens_attn.attribution.heads import sae_head_attribution

    return (sae_head_attribution(sae, layout.n_heads, index.to(sae.b_dec.device)).sum(dim=1) > 0).cpu()


@torch.no_grad()
def compute_source_signatures(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    tokens: torch.Tensor,
    index: torch.Tensor,
    options: SignatureOptions,
    progress: bool = False,
) -> SourceSignatures:
    """The signatures of features `index [F]` on `tokens [batch, pos]` (see the module)."""
    from tqdm.auto import tqdm

    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"expected tokens [batch, pos] with pos >= 2, got {list(tokens.shape)}")
    if tokens.shape[1] > model.cfg.n_ctx:
        raise ValueError(f"token rows of {tokens.shape[1]} exceed the model's n_ctx {model.cfg.n_ctx}")
    tokens = tokens.long().cpu()
    device = sae.b_dec.device
    run = _model_pass(model, layout, tokens, options.batch_size, device)
    categories = source_categories(tokens, options.near_window)
    seen = ((tokens[:, :, None] == tokens[:, None, :]) & torch.ones(tokens.shape[1], tokens.shape[1],
                                                                    dtype=torch.bool).tril(-1)).any(dim=2)
    every_feature = len(index) == sae.cfg.d_sae and bool((index == torch.arange(sae.cfg.d_sae)).all())
    acts = torch.empty(*tokens.shape, len(index))  # [n, q, F], filled batch by batch
    for start in range(0, tokens.shape[0], options.batch_size):
        batch = encode_hook_z(sae, run.x[start : start + options.batch_size], layout)
        acts[start : start + len(batch)] = batch if every_feature else batch[..., index.to(device)]
        del batch
    chunks = range(0, len(index), options.feature_chunk_size)
    parts: list[dict[str, torch.Tensor]] = []
    for start in tqdm(chunks, desc="source signatures", unit="chunk", disable=not progress):
        columns = slice(start, start + options.feature_chunk_size)
        parts.append(_chunk_statistics(sae, layout, run, tokens, categories, seen, acts[..., columns],
                                       index[columns], options))
        release_freed_memory()  # the chunk's large temporaries, kept by glibc otherwise
    merged = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    live = (merged["fires"] > 0) & _decoder_nonzero(sae, layout, index)
    return SourceSignatures(
        features=index.cpu(),
        live=live,
        fires=merged["fires"],
        positions=tokens.numel(),
        dfa_share=merged["dfa_share"],
        effective_sources=merged["effective_sources"],
        n_examples=merged["n_examples"],
        token_set=merged["token_set"],
        token_consistency=merged["token_consistency"],
        condition_fires={name: merged[f"fires_{name}"] for name in COUNTED},
        condition_tests={name: merged[f"tests_{name}"] for name in COUNTED},
        condition_mass={name: merged[f"mass_{name}"] for name in COUNTED},
        mass=merged["mass"],
        distance_fires=merged["distance_fires"],
        distance_tests=merged["distance_tests"],
        document_share=merged["document_share"],
        document_coverage=merged["document_coverage"],
        mean_run_length=merged["mean_run_length"],
        top_example=merged["top_example"],
    )


_last: tuple[tuple, SourceSignatures] | None = None


def _fingerprint(model: HookedTransformer, sae: SAE, layout: HeadLayout, tokens: torch.Tensor,
                 index: torch.Tensor, options: SignatureOptions) -> tuple:
    """What decides a signature: the objects, their parameters' versions (bumped by any
    in-place update), the tokens' bytes, the features and the options."""
    digest = hashlib.sha1(tokens.long().cpu().numpy().tobytes()).hexdigest()
    versions = tuple(p._version for p in (*model.parameters(), *sae.parameters()))
    return (id(model), id(sae), versions, layout, tuple(tokens.shape), digest,
            tuple(index.tolist()), options)


def source_signatures(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    tokens: torch.Tensor,
    index: Sequence[int] | torch.Tensor,
    options: SignatureOptions,
    progress: bool = False,
) -> SourceSignatures:
    """`compute_source_signatures`, reusing the last result when nothing it depends on
    changed (so every detector of one `detect` run shares one model pass)."""
    global _last
    index = torch.as_tensor(index, dtype=torch.long).cpu()
    key = _fingerprint(model, sae, layout, tokens, index, options)
    if _last is not None and _last[0] == key:
        return _last[1]
    signatures = compute_source_signatures(model, sae, layout, tokens, index, options, progress)
    _last = (key, signatures)
    return signatures
