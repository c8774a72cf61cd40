"""DFA by source position and head: against sae_dashboard's DFACalculator and against the
pre-activation SAELens itself computes (`hook_sae_acts_pre`)."""

from __future__ import annotations

import pytest
import torch
from sae_dashboard.dfa_calculator import DFACalculator
from sae_lens import StandardSAE, StandardSAEConfig

from sae_lens_attn.architectures.block_diagonal import BlockDiagonalSAE, BlockDiagonalSAEConfig
from sae_lens_attn.attribution import (
    dfa_by_source,
    dfa_by_source_and_head,
    dfa_hook_names,
    feature_dfa,
    site_dfa,
)
from sae_lens_attn.sources.head_layout import HeadLayout

LAYER = 1


def random_sae(d_in: int, d_sae: int = 24, seed: int = 0, **cfg) -> StandardSAE:
    """A dense SAE with random weights and non-zero biases (so the bias terms matter)."""
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, **cfg))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return sae


@pytest.fixture(scope="module")
def cache(tiny_model, tiny_tokens):
    pattern_name, v_name = dfa_hook_names(LAYER)
    _, cache = tiny_model.run_with_cache(
        tiny_tokens, names_filter=[pattern_name, v_name, f"blocks.{LAYER}.attn.hook_z"]
    )
    return cache[pattern_name], cache[v_name], cache[f"blocks.{LAYER}.attn.hook_z"]


def reference_pre(sae, x: torch.Tensor) -> torch.Tensor:
    """SAELens's own pre-activation for SAE input `x [batch, q, d_in]`."""
    _, sae_cache = sae.run_with_cache(x, names_filter="hook_sae_acts_pre")
    return sae_cache["hook_sae_acts_pre"]


def test_dfa_by_source_equals_sae_dashboard_dfa_calculator(tiny_model, cache):
    pattern, v, z = cache
    sae = random_sae(z.shape[2] * z.shape[3])
    features = [0, 3, 7, 11, 20]
    acts = sae.encode(z.flatten(-2))[..., features]
    max_positions = acts.argmax(dim=1)  # [batch, n_features]

    pattern_name, v_name = dfa_hook_names(LAYER)
    theirs = DFACalculator(tiny_model, sae).calculate(
        {pattern_name: pattern, v_name: v}, LAYER, features, max_positions
    )
    ours = dfa_by_source(pattern, v, sae.W_enc[:, features].detach(), max_positions)
    for i, feature in enumerate(features):
        expected = torch.from_numpy(theirs[feature]["dfa_values"])  # [batch, k]
        torch.testing.assert_close(ours[:, i], expected, atol=1e-5, rtol=0)
    head_split = dfa_by_source_and_head(
        pattern, v, sae.W_enc[:, features].detach(), max_positions, feature_chunk_size=2
    )
    torch.testing.assert_close(head_split.sum(-1), ours, atol=1e-6, rtol=0)


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
@pytest.mark.parametrize("normalize", ["none", "layer_norm", "constant_norm_rescale"])
def test_dfa_sums_to_preactivation_for_dense_sae(cache, apply_b_dec_to_input, normalize):
    pattern, v, z = cache
    x = z.flatten(-2)
    sae = random_sae(
        x.shape[-1], apply_b_dec_to_input=apply_b_dec_to_input, normalize_activations=normalize
    )
    pre = reference_pre(sae, x)  # [batch, q, d_sae]
    features = torch.tensor([1, 5, 9, 17, 23])
    dest = torch.randint(
        0, x.shape[1], (x.shape[0], len(features)), generator=torch.Generator().manual_seed(1)
    )
    dfa = feature_dfa(sae, pattern, v, features, dest, feature_chunk_size=2)

    expected = pre[torch.arange(x.shape[0])[:, None], dest, features]
    torch.testing.assert_close(dfa.pre_activation, expected, atol=1e-5, rtol=1e-5)
    assert dfa.by_source_head.shape == (x.shape[0], len(features), x.shape[1], 4)
    if not apply_b_dec_to_input:
        assert torch.all(dfa.b_dec_term == 0)
    else:
        assert dfa.b_dec_term.abs().max() > 0.1


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
def test_dfa_sums_to_preactivation_for_block_diagonal_sae(cache, apply_b_dec_to_input):
    pattern, v, z = cache
    x = z.flatten(-2)
    sae = BlockDiagonalSAE(
        BlockDiagonalSAEConfig(
            d_in=64, d_sae=24, n_heads=4, apply_b_dec_to_input=apply_b_dec_to_input
        )
    )
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_(0.0, 0.3, generator=generator)
    features = torch.tensor([0, 7, 13, 23])  # heads 0, 1, 2, 3 (6 features per head)
    dest = torch.randint(0, x.shape[1], (x.shape[0], 4), generator=generator)
    dfa = feature_dfa(sae, pattern, v, features, dest)

    expected = reference_pre(sae, x)[torch.arange(x.shape[0])[:, None], dest, features]
    torch.testing.assert_close(dfa.pre_activation, expected, atol=1e-5, rtol=1e-5)
    owner = torch.zeros(4, 4, dtype=torch.bool)
    owner[torch.arange(4), features // 6] = True  # each feature reads only its own head
    assert torch.all(dfa.by_head[:, ~owner] == 0) and torch.all(dfa.by_head[:, owner] != 0)


def test_dfa_is_causal_and_splits_exactly_over_heads(cache):
    pattern, v, z = cache
    sae = random_sae(z.shape[2] * z.shape[3])
    dest = torch.full((z.shape[0],), 5)
    dfa = feature_dfa(sae, pattern, v, [2, 4], dest)
    assert torch.all(dfa.by_source[..., 6:] == 0)  # sources after the destination: no attention
    # head h's part is exactly z at dest, head h, dotted with that head's encoder slice
    W = sae.W_enc[:, [2, 4]].unflatten(0, (4, 16))  # [H, d_head, F]
    per_head = torch.einsum("bhd,hdf->bfh", z[:, 5], W)
    torch.testing.assert_close(dfa.by_head, per_head, atol=1e-5, rtol=1e-5)


def test_dfa_follows_the_head_layout_for_a_subset_of_heads(tiny_model, cache):
    pattern, v, z = cache
    layout = HeadLayout.for_model(tiny_model, LAYER, heads=[2, 0])
    x = layout.select(z)
    sae = random_sae(layout.d_in)
    dest = torch.full((z.shape[0],), 9)
    dfa = feature_dfa(sae, pattern, v, [0, 1, 2], dest, layout=layout)
    expected = reference_pre(sae, x)[:, 9, :3]
    torch.testing.assert_close(dfa.pre_activation, expected, atol=1e-5, rtol=1e-5)

    layout.store_in(sae)  # the stored layout is used when none is passed
    torch.testing.assert_close(
        feature_dfa(sae, pattern, v, [0, 1, 2], dest).pre_activation, expected, atol=1e-5, rtol=1e-5
    )


def test_dfa_repeats_values_for_grouped_query_attention():
    generator = torch.Generator().manual_seed(0)
    pattern = torch.softmax(torch.randn(2, 4, 6, 6, generator=generator), dim=-1)
    v_kv = torch.randn(2, 6, 2, 3, generator=generator)  # 2 kv heads shared by 4 query heads
    W = torch.randn(12, 5, generator=generator)
    dest = torch.tensor([3, 5])
    grouped = dfa_by_source_and_head(pattern, v_kv, W, dest)
    full = dfa_by_source_and_head(pattern, v_kv.repeat_interleave(2, dim=2), W, dest)
    torch.testing.assert_close(grouped, full)


def test_dfa_rejects_inputs_that_do_not_fit_with_a_helpful_message(cache):
    pattern, v, z = cache
    W = torch.zeros(64, 3)
    with pytest.raises(ValueError, match="dest must be"):
        dfa_by_source(pattern, v, W, torch.zeros(3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="dest positions must lie in"):
        dfa_by_source(pattern, v, W, torch.full((z.shape[0],), 99))
    with pytest.raises(ValueError, match="n_heads \\* d_head = 64"):
        dfa_by_source(pattern, v, torch.zeros(60, 3), torch.zeros(z.shape[0], dtype=torch.long))
    with pytest.raises(ValueError, match="does not match 4 heads"):
        feature_dfa(random_sae(32), pattern, v, [0], torch.zeros(z.shape[0], dtype=torch.long))
    with pytest.raises(ValueError, match="feature 99 is out of range"):
        feature_dfa(random_sae(64), pattern, v, [99], torch.zeros(z.shape[0], dtype=torch.long))


@pytest.mark.parametrize(
    ("heads", "normalize"),
    [(None, "none"), ([2, 0], "none"), (None, "layer_norm"), ([3, 1], "constant_norm_rescale")],
)
def test_site_dfa_equals_feature_dfa_site_by_site(tiny_model, cache, heads, normalize):
    pattern, v, z = cache
    layout = HeadLayout.for_model(tiny_model, LAYER, heads=heads)
    sae = random_sae(layout.d_in, normalize_activations=normalize)
    generator = torch.Generator().manual_seed(3)
    n_sites = 40  # more features than one chunk, repeated prompts and features
    prompt = torch.randint(0, z.shape[0], (n_sites,), generator=generator)
    feature = torch.randint(0, 24, (n_sites,), generator=generator)
    dest = torch.randint(0, z.shape[1], (n_sites,), generator=generator)
    sites = site_dfa(sae, pattern, v, prompt, feature, dest, layout, feature_chunk_size=5)
    for e in range(n_sites):
        p, f, d = int(prompt[e]), int(feature[e]), int(dest[e])
        one = feature_dfa(sae, pattern[p : p + 1], v[p : p + 1], [f], torch.tensor([d]), layout)
        torch.testing.assert_close(sites.by_source_head[e], one.by_source_head[0, 0])
        torch.testing.assert_close(
            sites.bias[e], one.b_dec_term[0] + one.b_enc_term[0], atol=1e-6, rtol=1e-6
        )
    pre = sites.by_source_head.sum(dim=(1, 2)) + sites.bias
    expected = reference_pre(sae, layout.select(z))[prompt, dest, feature]
    torch.testing.assert_close(pre, expected, atol=1e-5, rtol=1e-5)
