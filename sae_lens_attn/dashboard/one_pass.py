"""sae_dashboard's feature data from one model pass over the prompts.

sae_dashboard's `SaeVisRunner.run` runs the model over every prompt again for each batch
of `minibatch_size_features` features, and for a top-k SAE encodes all features in each
of those passes. Here the model runs once (`PromptActivations.collect`: the layer's
`hook_z`, stopping right after it, and the attention pattern and values the DFA panel
reads when they fit a memory budget); each feature batch is then encoded from that cache
(`minibatch_size_features` features at a time: `[n_prompts, seq, batch]` in memory, never
`[n_tokens, d_sae]`), and handed to sae_dashboard's own pieces in the order `run` uses
them: `RollingCorrCoef`, `FeatureStatistics.create`, `get_features_table_data`,
`get_logits_table_data`, its histogram classes and `SequenceDataGenerator`, with its seeds
set at the start of the call (its quantile groups sample with Python's `random`). The
result is the `SaeVisData` the runner returns for the same features, so sae_dashboard's
page and its Neuronpedia converter read it unchanged (tests/test_one_pass.py compares them
field by field).

Differences from the runner, on purpose: decoder norms are not folded (the dashboard copy
switches that fold off anyway, see `sae_vis.dashboard_copy`); `use_dfa`,
`ignore_high_activation_norm_multiple` and `cache_dir` are refused (we compute DFA
ourselves); histograms whose "5 ticks" list sae_dashboard would make absurdly long get the
tidy ticks `sae_vis.tidy_ticks` would give them, without building that list first (it
cost 0.25 s per feature, half of the old export's time).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import einops
import torch

from sae_lens_attn.attribution.dfa import dfa_hook_names

if TYPE_CHECKING:
    from sae_dashboard.sae_vis_data import SaeVisConfig, SaeVisData
    from sae_dashboard.utils_fns import HistogramData
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

DEFAULT_ATTENTION_BUDGET_MB = 1024.0
TIDY_TICKS = 5  # ticks of a histogram whose sae_dashboard tick list is replaced
# sae_dashboard's "5 ticks" lists longer than this are replaced (tidy_ticks keeps <= 20)
_LONG_TICK_LIST = 1000


class _StopForward(Exception):
    """Raised in the hook_z hook: nothing after it is needed."""


@dataclass
class PromptActivations:
    """One model pass over `tokens [n_prompts, seq]` at one attention layer.

    z: `hook_z` of every head, flattened as sae_dashboard feeds it, `[n_prompts, seq,
    n_heads * d_head]`. pattern `[n_prompts, n_heads, q, k]` and v `[n_prompts, k,
    n_kv_heads, d_head]`: the layer's attention, kept when both fit the budget given to
    `collect` (else None, and DFA runs the model again on the prompts it needs).
    """

    layer: int
    tokens: torch.Tensor
    z: torch.Tensor
    pattern: torch.Tensor | None = None
    v: torch.Tensor | None = None
    _codes: tuple[SAE, list[tuple[torch.Tensor, torch.Tensor]]] | None = field(
        default=None, repr=False
    )

    @classmethod
    @torch.no_grad()
    def collect(
        cls,
        model: HookedTransformer,
        layer: int,
        tokens: torch.Tensor,
        minibatch_size: int = 64,
        attention_budget_mb: float = DEFAULT_ATTENTION_BUDGET_MB,
    ) -> PromptActivations:
        """Run `model` once over `tokens` in minibatches of `minibatch_size` prompts, up to
        `blocks.{layer}.attn.hook_z`."""
        z_name = f"blocks.{layer}.attn.hook_z"
        pattern_name, v_name = dfa_hook_names(layer)
        n_prompts, seq = tokens.shape
        cfg = model.cfg
        n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        attention_bytes = n_prompts * seq * (cfg.n_heads * seq + n_kv * cfg.d_head) * 4
        keep_attention = attention_bytes <= attention_budget_mb * 2**20
        names = [z_name, pattern_name, v_name] if keep_attention else [z_name]
        found: dict[str, torch.Tensor] = {}  # each filled minibatch by minibatch, no copies
        start = 0

        def keep(activation: torch.Tensor, hook) -> None:
            if hook.name not in found:
                found[hook.name] = activation.new_empty(n_prompts, *activation.shape[1:])
            found[hook.name][start : start + len(activation)] = activation
            if hook.name == z_name:
                raise _StopForward

        with model.hooks(fwd_hooks=[(name, keep) for name in names]):
            for minibatch in tokens.split(minibatch_size):
                try:
                    model(minibatch.to(cfg.device), stop_at_layer=layer + 1)
                except _StopForward:
                    pass
                start += len(minibatch)
        z = found[z_name].flatten(-2)
        return cls(layer, tokens, z, found.get(pattern_name), found.get(v_name))

    def topk_codes(
        self, encoder: SAE, minibatch_size: int | None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A top-k `encoder`'s activations of every token (all features encoded, as
        sae_dashboard does for `TopK`), kept sparse: (values, indices) `[mb, seq, k]` per
        token minibatch, k the most features active on one token. Computed once per
        encoder."""
        if self._codes is not None and self._codes[0] is encoder:
            return self._codes[1]
        codes = []
        for z in _minibatches(self.z, minibatch_size):
            acts = encoder.encode(z.to(encoder.device))
            k = max(int((acts != 0).sum(dim=-1).max()), 1)
            top = acts.topk(k, dim=-1)
            codes.append((top.values, top.indices))
        self._codes = (encoder, codes)
        return codes


def _minibatches(x: torch.Tensor, size: int | None) -> tuple[torch.Tensor, ...]:
    return (x,) if size is None else x.split(size)


@torch.no_grad()
def feature_activations(
    activations: PromptActivations,
    encoder: SAE,
    features: list[int],
    cfg: SaeVisConfig,
) -> torch.Tensor:
    """`features`' activations on every prompt token, `[n_prompts, seq, len(features)]`,
    encoded from the cache as `FeatureDataGenerator.get_feature_data` encodes them: a
    `TopK` activation encodes all features and selects (here from `topk_codes`), any other
    encodes with W_enc masked to `features` (`masked_to`)."""
    from sae_lens.config import DTYPE_MAP
    from sae_lens.saes.topk_sae import TopK

    dtype = DTYPE_MAP[cfg.dtype]
    if isinstance(encoder.activation_fn, TopK):
        column = torch.full((encoder.cfg.d_sae,), -1, dtype=torch.long)
        column[features] = torch.arange(len(features))
        parts = []
        for values, indices in activations.topk_codes(encoder, cfg.minibatch_size_tokens):
            dense = values.new_zeros(*values.shape[:-1], len(features) + 1)
            dense.scatter_add_(-1, column.to(indices.device)[indices] % (len(features) + 1), values)
            parts.append(dense[..., : len(features)].to(dtype))
        return torch.cat(parts)
    with masked_to(encoder, features):
        return torch.cat(
            [
                encoder.encode(z.to(encoder.device)).to(dtype)
                for z in _minibatches(activations.z, cfg.minibatch_size_tokens)
            ]
        )


# the 1-d parameters `FeatureMaskingContext` masks besides W_enc and W_dec, per architecture
_MASKED_VECTORS = {"standard": ("b_enc",), "jumprelu": ("b_enc", "threshold")}


@contextlib.contextmanager
def masked_to(encoder: SAE, features: list[int]) -> Iterator[None]:
    """sae_dashboard's `FeatureMaskingContext(encoder, features)`: inside the block the
    encoder's weights are those of `features` only (the same masked tensors), without its
    two full clones of W_enc and W_dec per feature batch (~0.2 s a batch at gpt2-small's
    width); the original parameters come back afterwards, as the same objects.
    Architectures other than standard and jumprelu use sae_dashboard's context."""
    from sae_dashboard.feature_data_generator import FeatureMaskingContext

    architecture = encoder.cfg.architecture
    vectors = _MASKED_VECTORS.get(architecture() if callable(architecture) else architecture)
    if vectors is None:
        with FeatureMaskingContext(encoder, features):
            yield
        return
    saved = {name: getattr(encoder, name) for name in ("W_dec", "W_enc", *vectors)}
    try:
        encoder.W_dec = torch.nn.Parameter(saved["W_dec"][features])
        encoder.W_enc = torch.nn.Parameter(saved["W_enc"][:, features])
        for name in vectors:
            setattr(encoder, name, torch.nn.Parameter(saved[name][features]))
        yield
    finally:
        for name, value in saved.items():
            setattr(encoder, name, value)


def histogram(
    kind: type[HistogramData], data: torch.Tensor, n_bins: int, title: str | None
) -> HistogramData:
    """`kind.from_data(data, n_bins, "5 ticks", title)` with `sae_vis.tidy_ticks`' ticks
    where sae_dashboard's would be absurd, without building those first. data: `[n]`."""
    if data.numel() == 0 or _upstream_tick_count(data) <= _LONG_TICK_LIST:
        hist = kind.from_data(data=data, n_bins=n_bins, tickmode="5 ticks", title=title)
        if len(hist.tick_vals) > 4 * TIDY_TICKS and hist.bar_values:
            hist.tick_vals = tidy_tick_values(hist.bar_values, TIDY_TICKS)
        return hist
    # HistogramData.from_data's bars (sae_dashboard 0.8, utils_fns.py ~1140-1148)
    low, high = data.min().item(), data.max().item()
    edges = torch.linspace(low, high, n_bins + 1)
    values = [round(x, 5) for x in (edges[:-1] + (high - low) / n_bins / 2).tolist()]
    return kind(
        bar_heights=torch.histc(data, bins=n_bins).int().tolist(),
        bar_values=values,
        tick_vals=tidy_tick_values(values, TIDY_TICKS),
        title=title,
    )


def _upstream_tick_count(data: torch.Tensor) -> int:
    """How many ticks `HistogramData.from_data`'s "5 ticks" mode makes for data with this
    range (its spacing is 0.1 * int(range / 0.3) + 1e-6, i.e. 1e-6 below a range of 0.3)."""
    high, low = data.max().item(), data.min().item()
    longer, shorter = (high, -low) if high > -low else (-low, high)
    spacing = 0.1 * int(1e-4 + longer / (3 * 0.1)) + 1e-6
    return 4 + max(int(shorter / spacing), 0)


def tidy_tick_values(bar_values: list[float], n_ticks: int = TIDY_TICKS) -> list[float]:
    """About `n_ticks` ticks at multiples of 1, 2 or 5 x 10^n covering `bar_values`."""
    low, high = min(bar_values), max(bar_values)
    step = _nice_step((high - low) / (n_ticks - 1))
    first, last = math.floor(low / step), math.ceil(high / step)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 5 x 10^n that is >= raw."""
    if raw <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


@torch.no_grad()
def one_pass_sae_vis_data(
    activations: PromptActivations,
    model: HookedTransformer,
    encoder: SAE,
    cfg: SaeVisConfig,
) -> SaeVisData:
    """The `SaeVisData` that `SaeVisRunner(cfg).run(encoder, model, activations.tokens)`
    returns for `cfg.features`, without running the model (module docstring). `encoder`
    reads `activations.z` (all heads of the layer); its decoder norms are used as given."""
    from sae_dashboard.components import ActsHistogramData, FeatureTablesData, LogitsHistogramData
    from sae_dashboard.data_parsing_fns import get_features_table_data, get_logits_table_data
    from sae_dashboard.feature_data import FeatureData
    from sae_dashboard.sae_vis_data import SaeVisData
    from sae_dashboard.sae_vis_runner import SaeVisRunner
    from sae_dashboard.sequence_data_generator import SequenceDataGenerator
    from sae_dashboard.transformer_lens_wrapper import (
        ActivationConfig,
        TransformerLensWrapper,
        to_resid_direction,
    )
    from sae_dashboard.utils_fns import FeatureStatistics, RollingCorrCoef

    unsupported = [
        name
        for name, value in (
            ("use_dfa", cfg.use_dfa),
            ("ignore_high_activation_norm_multiple", cfg.ignore_high_activation_norm_multiple),
            ("cache_dir", cfg.cache_dir),
            ("perform_ablation_experiments", cfg.perform_ablation_experiments),
        )
        if value
    ]
    if unsupported:
        raise ValueError(f"the one-pass builder does not support {', '.join(unsupported)}")
    runner = SaeVisRunner(cfg)
    runner.set_seeds()
    if encoder.hook_z_reshaping_mode:
        encoder.turn_off_forward_pass_hook_z_reshaping()
    tokens, layout = activations.tokens, cfg.feature_centric_layout
    wrapped = TransformerLensWrapper(model, ActivationConfig(cfg.hook_point, []))
    sequences = SequenceDataGenerator(cfg=cfg, tokens=tokens, W_U=model.W_U)
    keep = torch.ones_like(tokens, dtype=torch.bool)  # sae_dashboard's ignore mask
    if cfg.ignore_tokens:
        keep &= ~torch.isin(tokens, torch.tensor(sorted(cfg.ignore_tokens), dtype=tokens.dtype))
    if cfg.ignore_positions:
        keep[:, cfg.ignore_positions] = False
    result = SaeVisData(cfg=cfg)
    features_list = runner.handle_features(cfg.features, encoder)
    for features in runner.get_feature_batches(features_list):
        feat_acts = feature_activations(activations, encoder, features, cfg)  # [b, s, f]
        flat_acts = einops.rearrange(feat_acts, "b s feats -> feats (b s)")
        corrcoef_neurons = RollingCorrCoef()
        corrcoef_encoder = RollingCorrCoef(indices=features, with_self=True)
        for acts, z in zip(
            feat_acts.split(cfg.minibatch_size_tokens or len(tokens)),
            _minibatches(activations.z, cfg.minibatch_size_tokens),
            strict=True,
        ):
            acts = einops.rearrange(acts, "b s feats -> feats (b s)")
            corrcoef_neurons.update(acts, einops.rearrange(z, "b s d -> d (b s)"))
            corrcoef_encoder.update(acts, acts)
        feature_out_dir = encoder.W_dec[features]
        feature_resid_dir = to_resid_direction(feature_out_dir, wrapped)
        logits = einops.einsum(
            feature_resid_dir.to(device=model.W_U.device, dtype=model.W_U.dtype),
            model.W_U,
            "feats d_model, d_model d_vocab -> feats d_vocab",
        ).to(cfg.device)
        stats = FeatureStatistics.create(data=flat_acts, batch_size=cfg.quantile_feature_batch_size)
        tables = get_features_table_data(
            feature_out_dir=feature_out_dir,
            corrcoef_neurons=corrcoef_neurons,
            corrcoef_encoder=corrcoef_encoder,
            n_rows=layout.feature_tables_cfg.n_rows,
        )
        data: dict[int, FeatureData] = {}
        for i, feature in enumerate(features):
            masked = feat_acts[..., i] * keep.to(feat_acts.device)
            nonzero = masked[masked > 0]
            feature_data = FeatureData()
            feature_data.feature_tables_data = FeatureTablesData(
                **{key: value[i] for key, value in tables.items()}
            )
            feature_data.logits_histogram_data = histogram(
                LogitsHistogramData, logits[i].float(), layout.logits_hist_cfg.n_bins, None
            )
            feature_data.acts_histogram_data = histogram(
                ActsHistogramData,
                nonzero.float(),
                layout.act_hist_cfg.n_bins,
                f"ACTIVATIONS<br>DENSITY = {nonzero.numel() / masked.numel():.3%}",
            )
            feature_data.logits_table_data = get_logits_table_data(
                logit_vector=logits[i], n_rows=layout.logits_table_cfg.n_rows
            )
            feature_data.sequence_data = sequences.get_sequences_data(
                feat_acts=masked,
                feat_logits=logits[i],
                resid_post=torch.tensor([]),
                feature_resid_dir=feature_resid_dir[i],
            )
            data[feature] = feature_data
        result.update(SaeVisData(cfg=cfg, feature_data_dict=data, feature_stats=stats))
    result.model, result.encoder = model, encoder
    return result
