"""Direct feature attribution (DFA) by source position and head.

An attention layer's output before W_O is `z[b, q, h] = sum_k A[b, h, q, k] v[b, k, h]`,
and a hook_z SAE's pre-activation is linear in `x = z[..., heads, :].flatten(-2)`. So
feature j's pre-activation at destination q splits exactly into one term per source
position k and head h:

    dfa[k, h] = s * A[h, q, k] * (v[k, h] @ W_enc[h-slice, j])
    pre_j     = sum_{k,h} dfa[k, h] - b_dec @ W_enc[:, j] + b_enc[j]

(`s` is SAELens's per-token input normalisation, 1 when there is none; the `b_dec` term is
absent without `apply_b_dec_to_input`.) sae_dashboard's `DFACalculator` and Kissane et al.
report the first sum only; `FeatureDFA` also carries both bias terms so the parts add up
to the pre-activation SAELens computes (`hook_sae_acts_pre`).

Memory: values are contracted with W_enc per head first (`[batch, k, n_heads, features]`),
then weighted by the attention row at each feature's destination; `[batch, q, k,
n_heads * d_head]` is never built, and features are processed in chunks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.attribution._sae_weights import encoder_columns, resolve_features
from sae_lens_attn.sources.head_layout import METADATA_KEY, HeadLayout

if TYPE_CHECKING:
    from sae_lens import SAE

__all__ = [
    "FeatureDFA",
    "SiteDFA",
    "dfa_by_source",
    "dfa_by_source_and_head",
    "dfa_hook_names",
    "feature_dfa",
    "site_dfa",
]

DEFAULT_FEATURE_CHUNK = 64
# SAELens normalisations that rescale each token at run time (`SAE._setup_activation_
# normalization`); every other mode is the identity inside `SAE.encode`.
_PER_TOKEN_NORMALISATIONS = ("constant_norm_rescale", "layer_norm")
_LAYER_NORM_EPS = 1e-5  # the default of SAELens's run_time_activation_ln_in


def dfa_hook_names(layer: int) -> tuple[str, str]:
    """The TransformerLens hooks DFA reads: `(blocks.L.attn.hook_pattern, blocks.L.attn.hook_v)`."""
    return f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_v"


def _check_ndim(pattern: torch.Tensor, v: torch.Tensor) -> None:
    if pattern.ndim != 4 or v.ndim != 4:
        raise ValueError(
            "expected pattern [batch, n_heads, q, k] and v [batch, k, n_heads, d_head], got "
            f"{list(pattern.shape)} and {list(v.shape)}"
        )


def _check_inputs(
    pattern: torch.Tensor, v: torch.Tensor, W_enc: torch.Tensor, dest: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes; returns `v` with one value head per query head and `dest [b, F]`."""
    _check_ndim(pattern, v)
    batch, n_heads, _, n_src = pattern.shape
    if v.shape[0] != batch or v.shape[1] != n_src or n_heads % v.shape[2]:
        raise ValueError(
            f"v {list(v.shape)} does not fit pattern {list(pattern.shape)}: expected "
            f"[{batch}, {n_src}, n_kv_heads, d_head] with n_kv_heads dividing {n_heads}"
        )
    if v.shape[2] != n_heads:  # grouped-query attention: query head h reads kv head h // g
        v = v.repeat_interleave(n_heads // v.shape[2], dim=2)
    if W_enc.ndim != 2 or W_enc.shape[0] != n_heads * v.shape[3]:
        raise ValueError(
            f"expected W_enc [n_heads * d_head = {n_heads * v.shape[3]}, n_features], "
            f"got {list(W_enc.shape)}"
        )
    n_features = W_enc.shape[1]
    dest = torch.as_tensor(dest, dtype=torch.long, device=pattern.device)
    if dest.ndim == 1:
        dest = dest[:, None].expand(-1, n_features)
    if dest.shape != (batch, n_features):
        raise ValueError(
            f"dest must be [batch] or [batch, n_features] = [{batch}, {n_features}], "
            f"got {list(dest.shape)}"
        )
    if dest.numel() and (dest.min() < 0 or dest.max() >= pattern.shape[2]):
        raise ValueError(f"dest positions must lie in 0..{pattern.shape[2] - 1}")
    return v, dest


def _chunked_terms(
    pattern: torch.Tensor,
    v: torch.Tensor,
    W_enc: torch.Tensor,
    dest: torch.Tensor,
    chunk: int,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield `(feature slice, terms [batch, chunk, n_heads, k])` chunk by chunk."""
    if chunk <= 0:
        raise ValueError(f"feature_chunk_size must be positive, got {chunk}")
    n_heads, d_head = pattern.shape[1], v.shape[3]
    W_heads = W_enc.to(v.dtype).unflatten(0, (n_heads, d_head))  # [H, d_head, F]
    rows_by_dest = pattern.transpose(1, 2)  # [b, q, H, k], a view
    batch_index = torch.arange(pattern.shape[0], device=pattern.device)[:, None]
    for start in range(0, W_enc.shape[1], chunk):
        features = slice(start, start + chunk)
        values_in = torch.einsum("bkhd,hdf->bfhk", v, W_heads[..., features])
        yield features, rows_by_dest[batch_index, dest[:, features]] * values_in


def dfa_by_source_and_head(
    pattern: torch.Tensor,
    v: torch.Tensor,
    W_enc: torch.Tensor,
    dest: torch.Tensor,
    *,
    feature_chunk_size: int = DEFAULT_FEATURE_CHUNK,
) -> torch.Tensor:
    """DFA of each feature at its destination, split by source position and head.

    pattern `[batch, n_heads, q, k]`, v `[batch, k, n_heads (or n_kv_heads), d_head]`,
    W_enc `[n_heads * d_head, n_features]` (the features' encoder columns, heads in
    pattern order), dest `[batch, n_features]` or `[batch]` destination positions
    -> `[batch, n_features, k, n_heads]`; summed over (k, h) it is `x[dest] @ W_enc`.
    """
    v, dest = _check_inputs(pattern, v, W_enc, dest)
    batch, n_heads, _, n_src = pattern.shape
    out = pattern.new_empty(batch, W_enc.shape[1], n_src, n_heads, dtype=v.dtype)
    for features, terms in _chunked_terms(pattern, v, W_enc, dest, feature_chunk_size):
        out[:, features] = terms.transpose(2, 3)
    return out


def dfa_by_source(
    pattern: torch.Tensor,
    v: torch.Tensor,
    W_enc: torch.Tensor,
    dest: torch.Tensor,
    *,
    feature_chunk_size: int = DEFAULT_FEATURE_CHUNK,
) -> torch.Tensor:
    """Like `dfa_by_source_and_head` summed over heads: `[batch, n_features, k]`.

    The quantity sae_dashboard's `DFACalculator` reports (`dfa_values`), in memory that
    scales with `batch * chunk * n_heads * k` instead of `batch * q * k * n_heads * d_head`.
    """
    v, dest = _check_inputs(pattern, v, W_enc, dest)
    out = pattern.new_empty(pattern.shape[0], W_enc.shape[1], pattern.shape[3], dtype=v.dtype)
    for features, terms in _chunked_terms(pattern, v, W_enc, dest, feature_chunk_size):
        out[:, features] = terms.sum(dim=2)
    return out


@dataclass(frozen=True)
class FeatureDFA:
    """DFA of some features of an SAE, with the bias terms that complete it.

    `by_source_head [batch, n_features, k, n_heads]` (heads in the SAE input's order),
    `b_dec_term [n_features]` (`-b_dec @ W_enc[:, j]`, zero without
    `apply_b_dec_to_input`), `b_enc_term [n_features]`, `dest [batch, n_features]`.
    """

    by_source_head: torch.Tensor
    b_dec_term: torch.Tensor
    b_enc_term: torch.Tensor
    dest: torch.Tensor

    @property
    def by_source(self) -> torch.Tensor:
        """`[batch, n_features, k]`: contribution of each source position."""
        return self.by_source_head.sum(dim=-1)

    @property
    def by_head(self) -> torch.Tensor:
        """`[batch, n_features, n_heads]`: contribution of each head."""
        return self.by_source_head.sum(dim=-2)

    @property
    def pre_activation(self) -> torch.Tensor:
        """`[batch, n_features]`: sum of all terms, SAELens's `hook_sae_acts_pre` at dest."""
        return self.by_source_head.sum(dim=(-1, -2)) + self.b_dec_term + self.b_enc_term


def _layout_heads(sae: SAE, layout: HeadLayout | None, n_model_heads: int) -> list[int]:
    stored = sae.cfg.metadata.get(METADATA_KEY) if layout is None else None
    if layout is None and stored:
        layout = HeadLayout.from_dict(stored)
    if layout is not None and layout.n_model_heads != n_model_heads:
        raise ValueError(
            f"the head layout has {layout.n_model_heads} model heads but the pattern has "
            f"{n_model_heads}: pass hook_pattern/hook_v of layer {layout.layer}"
        )
    return list(layout.heads) if layout is not None else list(range(n_model_heads))


def _per_token_scale(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """SAELens's run-time input scale per token: `x [batch, q, d_in]` -> `[batch, q]`."""
    mode = sae.cfg.normalize_activations
    if mode == "constant_norm_rescale":
        return sae.cfg.d_in**0.5 / x.norm(dim=-1)
    centred = x - x.mean(dim=-1, keepdim=True)
    return 1.0 / (centred.std(dim=-1) + _LAYER_NORM_EPS)


def _sae_heads(
    sae: SAE, pattern: torch.Tensor, v: torch.Tensor, layout: HeadLayout | None
) -> tuple[list[int], torch.Tensor]:
    """The model heads `sae` reads (checked against its d_in) and `v` with one value head
    per query head (grouped-query attention repeated)."""
    if not hasattr(sae, "b_enc") or not hasattr(sae, "W_enc"):
        raise ValueError(
            f"{type(sae).__name__} has no W_enc/b_enc pre-activation; DFA supports "
            "standard, topk, jumprelu, batchtopk and block_diagonal SAEs"
        )
    _check_ndim(pattern, v)
    heads = _layout_heads(sae, layout, pattern.shape[1])
    if len(heads) * v.shape[-1] != sae.cfg.d_in:
        raise ValueError(
            f"SAE d_in={sae.cfg.d_in} does not match {len(heads)} heads x d_head={v.shape[-1]}; "
            "pass the HeadLayout the SAE was trained on"
        )
    if v.shape[2] != pattern.shape[1] and pattern.shape[1] % v.shape[2] == 0:
        v = v.repeat_interleave(pattern.shape[1] // v.shape[2], dim=2)
    return heads, v


def _encoder_side(
    sae: SAE, features: Sequence[int] | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(feature index, W_enc columns `[d_in, F]`, the columns x meets: centred for
    SAELens's `layer_norm` input normalisation)."""
    index = resolve_features(sae, features)
    W_enc = encoder_columns(sae, index)
    centred = sae.cfg.normalize_activations == "layer_norm"
    return index, W_enc, W_enc - W_enc.mean(dim=0, keepdim=True) if centred else W_enc


@torch.no_grad()
def feature_dfa(
    sae: SAE,
    pattern: torch.Tensor,
    v: torch.Tensor,
    features: Sequence[int] | torch.Tensor,
    dest: torch.Tensor,
    layout: HeadLayout | None = None,
    *,
    feature_chunk_size: int = DEFAULT_FEATURE_CHUNK,
) -> FeatureDFA:
    """Exact DFA of `features` of a hook_z `sae` at destinations `dest`.

    pattern: the layer's `hook_pattern [batch, n_model_heads, q, k]`; v: its `hook_v
    [batch, k, n_kv_heads, d_head]`; dest: `[batch, n_features]` or `[batch]`. The heads
    the SAE reads come from `layout`, else the SAE's stored head layout, else all heads.
    Handles SAELens's input normalisation (`layer_norm` centring is folded into W_enc,
    per-token scales are applied) and `apply_b_dec_to_input`, for dense SAEs and
    block-diagonal ones (read from their blocks). `pre_activation` equals SAELens's
    `hook_sae_acts_pre`; TopK's optional decoder-norm rescaling comes after that hook.
    """
    heads, v = _sae_heads(sae, pattern, v, layout)
    pattern, v = pattern[:, heads].to(sae.dtype), v[:, :, heads].to(sae.dtype)
    index, W_enc, W_x = _encoder_side(sae, features)
    terms = dfa_by_source_and_head(pattern, v, W_x, dest, feature_chunk_size=feature_chunk_size)
    _, dest = _check_inputs(pattern, v, W_x, dest)  # as `[batch, n_features]`
    if sae.cfg.normalize_activations in _PER_TOKEN_NORMALISATIONS:
        x = torch.einsum("bhqk,bkhd->bqhd", pattern, v).flatten(-2)
        scale = _per_token_scale(sae, x).gather(1, dest)  # [b, F]
        terms = terms * scale[..., None, None]
    b_dec_term = -(sae.b_dec @ W_enc) * float(sae.cfg.apply_b_dec_to_input)
    return FeatureDFA(terms, b_dec_term, sae.b_enc[index], dest)


@dataclass(frozen=True)
class SiteDFA:
    """DFA at sites (prompt, feature, destination): `by_source_head [n_sites, k, n_heads]`
    and `bias [n_sites]` (the `b_dec` and `b_enc` terms), so that
    `by_source_head.sum((1, 2)) + bias` is each site's pre-activation."""

    by_source_head: torch.Tensor
    bias: torch.Tensor


@torch.no_grad()
def site_dfa(
    sae: SAE,
    pattern: torch.Tensor,
    v: torch.Tensor,
    prompt: torch.Tensor,
    feature: torch.Tensor,
    dest: torch.Tensor,
    layout: HeadLayout | None = None,
    *,
    feature_chunk_size: int = 16,
) -> SiteDFA:
    """`feature_dfa` at many sites at once: site e is feature `feature[e]` at position
    `dest[e]` of prompt `prompt[e]` (all `[n_sites]`) of `pattern [batch, n_model_heads, q,
    k]` and `v [batch, k, n_kv_heads, d_head]`. Per chunk of features the values of the
    prompts those features need are contracted with W_enc once (`[prompts, chunk, n_heads,
    k]`), then each site takes its prompt's attention row at its destination; neither
    input is copied whole. Equal to `feature_dfa` site by site."""
    heads, v = _sae_heads(sae, pattern, v, layout)
    all_heads = heads == list(range(pattern.shape[1]))
    device = pattern.device
    prompt, feature, dest = (t.to(device=device, dtype=torch.long) for t in (prompt, feature, dest))
    features, column = feature.unique(return_inverse=True)
    index, W_enc, W_x = _encoder_side(sae, features)
    n_heads, d_head, n_src = len(heads), v.shape[3], pattern.shape[3]
    W_heads = W_x.to(sae.dtype).unflatten(0, (n_heads, d_head))  # [H, d_head, F]
    rows = pattern[prompt, :, dest]  # [E, model heads, k]: each site's attention row
    rows = (rows if all_heads else rows[:, heads]).to(sae.dtype)
    out = rows.new_empty(len(prompt), n_src, n_heads)
    for start in range(0, len(features), feature_chunk_size):
        sites = ((column >= start) & (column < start + feature_chunk_size)).nonzero()[:, 0]
        used, local = prompt[sites].unique(return_inverse=True)
        values = v[used] if all_heads else v[used][:, :, heads]
        values_in = torch.einsum(
            "bkhd,hdf->bfhk", values.to(sae.dtype), W_heads[..., start : start + feature_chunk_size]
        )
        out[sites] = (rows[sites] * values_in[local, column[sites] - start]).transpose(1, 2)
    if sae.cfg.normalize_activations in _PER_TOKEN_NORMALISATIONS:
        for sites in torch.arange(len(prompt), device=device).split(256):
            values = v[prompt[sites]] if all_heads else v[prompt[sites]][:, :, heads]
            x = torch.einsum("ehk,ekhd->ehd", rows[sites], values.to(sae.dtype)).flatten(-2)
            out[sites] *= _per_token_scale(sae, x[:, None])[:, 0, None, None]
    b_dec_term = -(sae.b_dec @ W_enc) * float(sae.cfg.apply_b_dec_to_input)
    return SiteDFA(out, (b_dec_term + sae.b_enc[index])[column])
