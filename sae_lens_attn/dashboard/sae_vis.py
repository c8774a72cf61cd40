"""Running sae_dashboard's feature-centric data pipeline on a hook_z SAE.

sae_dashboard only takes dense SAEs that read every head of the layer
(`FeatureMaskingContext` swaps `W_enc`/`W_dec` parameters, and `to_resid_direction`
multiplies by all of `W_O[layer]`), and its runner folds decoder norms into the SAE it is
given. So it runs on a copy (`dashboard_copy`): block-diagonal SAEs through their exact
`to_dense_sae()`, SAEs on a subset of heads embedded into the full layer width with zero
weights for the other heads (the same activations), and its decoder-norm fold switched off
on the copy. Every number on the page (sae_dashboard's activations and histograms, our
DFA, circuit and head panels) is then an activation of the SAE as given: one scale per
page. The copy comes back in `SaeVisData.encoder`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING

import torch
from sae_lens.saes.topk_sae import TopK

if TYPE_CHECKING:
    from sae_dashboard.layout import SaeVisLayoutConfig
    from sae_dashboard.sae_vis_data import SaeVisData
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.dashboard.config import DashboardConfig
    from sae_lens_attn.dashboard.one_pass import PromptActivations
    from sae_lens_attn.sources.head_layout import HeadLayout


def sae_vis_layout(config: DashboardConfig):
    """sae_dashboard's default feature-centric layout with our sizes."""
    from sae_dashboard.components_config import (
        ActsHistogramConfig,
        Column,
        FeatureTablesConfig,
        LogitsHistogramConfig,
        LogitsTableConfig,
        SequencesConfig,
    )
    from sae_dashboard.layout import SaeVisLayoutConfig

    return SaeVisLayoutConfig(
        columns=[
            Column(FeatureTablesConfig()),
            Column(
                ActsHistogramConfig(n_bins=config.hist_bins),
                LogitsTableConfig(n_rows=config.logits_table_rows),
                LogitsHistogramConfig(n_bins=config.hist_bins),
            ),
            Column(
                SequencesConfig(
                    stack_mode="stack-none",
                    buffer=config.buffer,
                    top_acts_group_size=config.top_acts_group_size,
                    n_quantiles=config.n_quantiles,
                    quantile_group_size=config.quantile_group_size,
                )
            ),
        ],
        height=750,
    )


# Which dimension of each weight is the SAE input (`d_in`).
_INPUT_DIM = {"W_enc": 0, "W_dec": 1, "b_dec": 0}


def full_width_dense_copy(sae: SAE, layout: HeadLayout) -> SAE:
    """A dense SAE reading all heads of the layer, with the same activations as `sae`."""
    dense = sae.to_dense_sae() if hasattr(sae, "to_dense_sae") else copy.deepcopy(sae)
    if layout.uses_all_heads:
        return dense
    if dense.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm"):
        raise ValueError(
            "sae_dashboard needs every head of the layer; an SAE on heads "
            f"{list(layout.heads)} with per-token normalisation "
            f"{dense.cfg.normalize_activations!r} cannot be widened exactly"
        )
    full_width = layout.n_model_heads * layout.d_head
    columns = torch.cat(
        [torch.arange(h * layout.d_head, (h + 1) * layout.d_head) for h in layout.heads]
    )
    wide = type(dense)(dataclasses.replace(dense.cfg, d_in=full_width))
    wide_shapes = {name: value.shape for name, value in wide.state_dict().items()}
    state = dense.state_dict()
    for name, dim in _INPUT_DIM.items():
        target = torch.zeros(wide_shapes[name], dtype=state[name].dtype)
        state[name] = target.index_copy_(dim, columns, state[name])
    wide.load_state_dict(state)
    wide.activation_fn = dense.activation_fn  # e.g. a per-head top-k the config does not name
    return wide


class _EncodeAllThenSelect(TopK):
    """A top-k activation that is not SAELens's `TopK` (e.g. the block-diagonal SAE's
    per-head top-k), presented as one: sae_dashboard then encodes all features and selects
    afterwards (`feature_data_generator.py` ~87), instead of encoding with W_enc masked to
    the selected features, which would pick the top k among those only."""

    def __init__(self, activation: torch.nn.Module) -> None:
        super().__init__(k=int(getattr(getattr(activation, "topk", activation), "k", 0)))
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x)


def _keep_decoder_norms() -> None:
    """Stands in for `fold_W_dec_norm` on the dashboard copy (see `dashboard_copy`)."""


def dashboard_copy(sae: SAE, layout: HeadLayout) -> SAE:
    """The SAE sae_dashboard runs on: `full_width_dense_copy` with the same activations as
    `sae`. sae_dashboard folds decoder norms into every SAE it renders (`SaeVisRunner.run`),
    which rescales each feature's activations by its decoder norm (and, for top-k SAEs,
    changes which k features win; SAELens's TopK SAEs refuse it), so the copy keeps its
    norms and the page shows the SAE as given. A per-head top-k is wrapped as a `TopK`
    (`_EncodeAllThenSelect`)."""
    from sae_lens_attn.architectures.block_diagonal import PerHeadTopK

    dense = full_width_dense_copy(sae, layout)
    if isinstance(dense.activation_fn, PerHeadTopK):
        dense.activation_fn = _EncodeAllThenSelect(dense.activation_fn)
    dense.fold_W_dec_norm = _keep_decoder_norms
    return dense


def tidy_ticks(sae_vis_data: SaeVisData, n_ticks: int = 5) -> None:
    """Replace absurd histogram tick lists by `n_ticks` evenly spaced ticks, in place.

    Workaround for sae_dashboard 0.8 `HistogramData.from_data` ("5 ticks" mode): when the
    data range is below 0.3 the tick spacing becomes 1e-6 and it emits one tick per 1e-6
    (hundreds of thousands; ~1.4 MB of JSON per feature, and a slow page). Pinned by
    `test_sae_dashboard_tick_bug_is_still_there` in tests/test_dashboard.py. The one-pass
    builder (`one_pass.histogram`) gives its histograms these ticks directly.
    """
    from sae_lens_attn.dashboard.one_pass import tidy_tick_values

    for feature_data in sae_vis_data.feature_data_dict.values():
        for hist in (feature_data.logits_histogram_data, feature_data.acts_histogram_data):
            if len(hist.tick_vals) > 4 * n_ticks and hist.bar_values:
                hist.tick_vals = tidy_tick_values(hist.bar_values, n_ticks)


def sae_vis_config(
    layout: HeadLayout,
    features: list[int],
    config: DashboardConfig,
    vis_layout: SaeVisLayoutConfig | None = None,
    ignore_tokens: set[int] | None = None,
):  # -> sae_dashboard.sae_vis_data.SaeVisConfig
    """sae_dashboard's `SaeVisConfig` for `features` on `layout`'s hook, with `config`'s
    batch sizes and device (`vis_layout` default `sae_vis_layout(config)`)."""
    from sae_dashboard.sae_vis_data import SaeVisConfig

    return SaeVisConfig(
        hook_point=layout.hook_name,
        features=features,
        minibatch_size_tokens=config.minibatch_size_tokens,
        minibatch_size_features=config.minibatch_size_features,
        feature_centric_layout=vis_layout or sae_vis_layout(config),
        device=config.device,
        verbose=False,
        ignore_tokens=ignore_tokens or set(),
    )


def run_sae_vis(
    model: HookedTransformer,
    sae: SAE,
    layout: HeadLayout,
    tokens: torch.Tensor,
    features: list[int],
    config: DashboardConfig,
    vis_layout: SaeVisLayoutConfig | None = None,
    ignore_tokens: set[int] | None = None,
    dense: SAE | None = None,
    activations: PromptActivations | None = None,
) -> SaeVisData:
    """What sae_dashboard's `SaeVisRunner` returns for `features` on a dense full-width
    copy of `sae`, built from one model pass (`one_pass`); `sae` itself is left untouched.
    The returned data's `encoder` is that copy (decoder norms not folded: its activations
    are those of `sae`). `vis_layout`: sae_dashboard's layout (default
    `sae_vis_layout(config)`); `ignore_tokens`: token ids never picked as examples
    (sae_dashboard's `ignore_tokens`, default none); `dense`: a `dashboard_copy(sae,
    layout)` and `activations`: a `PromptActivations.collect` of `tokens`, both made once
    by a caller that runs many feature batches (default: new ones for this call)."""
    from sae_lens_attn.dashboard.one_pass import PromptActivations, one_pass_sae_vis_data

    dense = dense if dense is not None else dashboard_copy(sae, layout)
    if activations is None:
        activations = PromptActivations.collect(
            model, layout.layer, tokens, config.minibatch_size_tokens
        )
    vis_config = sae_vis_config(layout, features, config, vis_layout, ignore_tokens)
    return one_pass_sae_vis_data(activations, model, dense, vis_config)
