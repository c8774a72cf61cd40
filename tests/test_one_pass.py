"""The one-pass builder against sae_dashboard's own `SaeVisRunner` on the same SAE.

Both read the same dashboard copy of the SAE (decoder norms kept, as `run_sae_vis` gives
sae_dashboard), with the same config. The runner runs the model once per feature batch;
the builder once in all. Every field of every `FeatureData` must agree: the same examples
(prompt, position, token ids: exactly), their activations and logits, the group titles
(the quantile groups sample with Python's `random`, seeded as the runner seeds it, in the
same order), histograms, tables and feature statistics.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

from sae_lens_attn.dashboard.config import DashboardConfig
from sae_lens_attn.dashboard.neuronpedia import NeuronpediaSettings, neuronpedia_layout
from sae_lens_attn.dashboard.one_pass import (
    PromptActivations,
    feature_activations,
    histogram,
    one_pass_sae_vis_data,
)
from sae_lens_attn.dashboard.sae_vis import dashboard_copy, sae_vis_layout, tidy_ticks
from sae_lens_attn.sources.head_layout import HeadLayout

pytestmark = pytest.mark.usefixtures("one_thread")
D_SAE = 24


def random_sae(kind: str, d_in: int = 64) -> StandardSAE:
    generator = torch.Generator().manual_seed(5)
    if kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=D_SAE, k=6))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=D_SAE))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, D_SAE, generator=generator) * 0.3)
        sae.W_dec.copy_(torch.randn(D_SAE, d_in, generator=generator) * 0.3)
        sae.b_enc.copy_(torch.randn(D_SAE, generator=generator) * 0.1 - 0.05)
    return sae


def vis_config(layout, features, vis_layout, ignore_tokens=()):
    from sae_dashboard.sae_vis_data import SaeVisConfig

    return SaeVisConfig(
        hook_point=layout.hook_name,
        features=features,
        minibatch_size_tokens=16,
        minibatch_size_features=5,  # several feature batches: the random state carries on
        feature_centric_layout=vis_layout,
        ignore_tokens=set(ignore_tokens),
        verbose=False,
    )


def assert_same(ours, theirs, where="") -> None:
    """Equal structure; ints and strings exactly, floats to 1e-5."""
    if dataclasses.is_dataclass(theirs):
        assert type(ours) is type(theirs), where
        for f in dataclasses.fields(theirs):
            assert_same(getattr(ours, f.name), getattr(theirs, f.name), f"{where}.{f.name}")
    elif isinstance(theirs, dict):
        assert list(ours) == list(theirs), where
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(theirs, (list, tuple)):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(theirs, float):
        assert math.isclose(ours, theirs, rel_tol=1e-5, abs_tol=1e-5), (where, ours, theirs)
    else:
        assert ours == theirs, (where, ours, theirs)


def reference(model, sae, layout, tokens, config):
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    data = SaeVisRunner(config).run(encoder=dashboard_copy(sae, layout), model=model, tokens=tokens)
    tidy_ticks(data)
    return data


@pytest.mark.parametrize(
    ("kind", "page"),
    [("standard", "dashboard"), ("standard", "neuronpedia"), ("topk", "neuronpedia")],
)
def test_one_pass_equals_sae_dashboards_runner(tiny_model, kind, page):
    tokens = torch.randint(1, 101, (40, 24), generator=torch.Generator().manual_seed(2))
    tokens[:, 0] = 0
    layout = HeadLayout.for_model(tiny_model, 1)
    sae = random_sae(kind)
    features = [0, 3, 4, 7, 8, 11, 13, 20, 23]
    if page == "dashboard":
        config = vis_config(layout, features, sae_vis_layout(DashboardConfig()))
    else:
        settings = NeuronpediaSettings(model_id="tiny", sae_set="x", top_acts_group_size=6)
        config = vis_config(layout, features, neuronpedia_layout(settings), ignore_tokens={0})
    theirs = reference(tiny_model, sae, layout, tokens, config)
    activations = PromptActivations.collect(tiny_model, 1, tokens, minibatch_size=16)
    ours = one_pass_sae_vis_data(activations, tiny_model, dashboard_copy(sae, layout), config)

    assert list(ours.feature_data_dict) == features
    assert_same(ours.feature_data_dict, theirs.feature_data_dict, "features")
    assert_same(ours.feature_stats, theirs.feature_stats, "stats")
    groups = [g for f in ours.feature_data_dict.values() for g in f.sequence_data.seq_group_data]
    assert sum("INTERVAL" in g.title and len(g.seq_data) > 0 for g in groups) >= 10


def test_collect_keeps_hook_z_and_attention_of_one_forward(tiny_model, tiny_tokens):
    names = ["blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_v"]
    _, cache = tiny_model.run_with_cache(tiny_tokens, names_filter=names)
    kept = PromptActivations.collect(tiny_model, 1, tiny_tokens, minibatch_size=3)
    torch.testing.assert_close(kept.z, cache[names[0]].flatten(-2))
    torch.testing.assert_close(kept.pattern, cache[names[1]])
    torch.testing.assert_close(kept.v, cache[names[2]])
    small = PromptActivations.collect(tiny_model, 1, tiny_tokens, attention_budget_mb=0.01)
    assert small.pattern is None and small.v is None
    torch.testing.assert_close(small.z, kept.z)


def test_topk_activations_equal_encoding_every_feature(tiny_model, tiny_tokens):
    from sae_dashboard.sae_vis_data import SaeVisConfig

    layout = HeadLayout.for_model(tiny_model, 1)
    sae = dashboard_copy(random_sae("topk"), layout)
    kept = PromptActivations.collect(tiny_model, 1, tiny_tokens)
    features = [9, 2, 17]
    config = SaeVisConfig(hook_point=layout.hook_name, features=features, minibatch_size_tokens=3)
    ours = feature_activations(kept, sae, features, config)
    torch.testing.assert_close(ours, sae.encode(kept.z)[..., features], rtol=0, atol=0)
    assert (ours > 0).any()


def test_histogram_skips_sae_dashboards_tick_list_but_keeps_its_bars():
    from sae_dashboard.components import LogitsHistogramData

    for data in (torch.linspace(-0.12, 0.2, 500), torch.linspace(-1.5, 2.5, 300) ** 3):
        theirs = LogitsHistogramData.from_data(data=data, n_bins=40, tickmode="5 ticks", title="t")
        ours = histogram(LogitsHistogramData, data, 40, "t")
        assert ours.bar_heights == theirs.bar_heights and ours.title == "t"
        assert ours.bar_values == pytest.approx(theirs.bar_values, abs=1e-9)
        assert 3 <= len(ours.tick_vals) <= 20
        if len(theirs.tick_vals) <= 20:
            assert ours.tick_vals == theirs.tick_vals


@pytest.mark.parametrize("kind", ["standard", "jumprelu"])
def test_masked_to_encodes_as_feature_masking_context(kind):
    """The same activations as sae_dashboard's context, the original parameters back."""
    from sae_dashboard.feature_data_generator import FeatureMaskingContext
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    from sae_lens_attn.dashboard.one_pass import masked_to

    if kind == "jumprelu":
        sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=64, d_sae=D_SAE))
        with torch.no_grad():
            sae.threshold.copy_(torch.rand(D_SAE, generator=torch.Generator().manual_seed(1)) * 0.2)
            sae.W_enc.copy_(random_sae("standard").W_enc)
    else:
        sae = random_sae(kind)
    z = torch.randn(40, 64, generator=torch.Generator().manual_seed(2))
    features = [7, 2, 19, 3]
    with torch.no_grad(), FeatureMaskingContext(sae, features):
        theirs = sae.encode(z)
    before = dict(sae.named_parameters())
    with torch.no_grad(), masked_to(sae, features):
        ours = sae.encode(z)
    assert torch.equal(ours, theirs)
    assert (theirs > 0).any() and (theirs == 0).any()
    assert all(getattr(sae, name) is value for name, value in before.items())
