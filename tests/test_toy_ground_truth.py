"""The multi-head toy ground truth: head supports, directions, firing statistics."""

import math

import pytest
import torch
from sae_lens.synthetic import LowRankCorrelationConfig

from sae_lens_attn.toy import MultiHeadToyConfig, make_multi_head_toy, zipfian_for_mean_l0

SMALL = {"n_heads": 4, "d_head": 8, "n_features": 64}


def head_norms(toy):
    """`[n_features, n_heads]` norms of every feature's head slices."""
    return toy.features.unflatten(1, (toy.cfg.n_heads, toy.cfg.d_head)).norm(dim=2)


def test_single_head_features_are_unit_vectors_inside_one_head():
    toy = make_multi_head_toy(MultiHeadToyConfig(**SMALL))
    norms = head_norms(toy)
    assert toy.is_single_head.all()
    assert torch.allclose(toy.features.norm(dim=1), torch.ones(64), atol=1e-5)
    home = torch.nn.functional.one_hot(toy.home_head, 4).bool()
    assert torch.allclose(norms[home], torch.ones(64), atol=1e-5)
    assert norms[~home].abs().max() == 0


def test_every_head_gets_an_equal_share_and_the_same_frequency_mix():
    toy = make_multi_head_toy(MultiHeadToyConfig(**SMALL))
    probabilities = toy.synthetic_model.activation_generator.firing_probabilities
    per_head = [probabilities[toy.home_head == h] for h in range(4)]
    assert [len(p) for p in per_head] == [16] * 4
    sums = torch.stack([p.sum() for p in per_head])
    # dealt back and forth over a decreasing list: each pair of rounds adds at most
    # (its first - its last probability) to the spread, which telescopes to p_max - p_min
    assert sums.max() - sums.min() <= probabilities.max() - probabilities.min() + 1e-6


def test_multi_head_features_spread_their_norm_equally_over_k_heads():
    toy = make_multi_head_toy(
        MultiHeadToyConfig(**SMALL, single_head_fraction=0.75, heads_per_multi_head_feature=3)
    )
    multi = ~toy.is_single_head
    assert int(multi.sum()) == 16
    assert (toy.feature_heads[multi].sum(dim=1) == 3).all()
    norms = head_norms(toy)[multi]
    spanned = toy.feature_heads[multi]
    assert torch.allclose(norms[spanned], torch.full((16 * 3,), 1 / math.sqrt(3)), atol=1e-5)
    assert norms[~spanned].abs().max() == 0
    assert (toy.home_head[multi] == -1).all()


def test_samples_are_the_feature_activations_times_the_true_directions():
    torch.manual_seed(0)
    toy = make_multi_head_toy(MultiHeadToyConfig(**SMALL, single_head_fraction=0.5))
    x, acts = toy.sample(4096)
    assert torch.allclose(x, acts @ toy.features, atol=1e-5)
    assert (acts >= 0).all()
    expected_l0 = float(toy.synthetic_model.activation_generator.firing_probabilities.sum())
    assert expected_l0 == pytest.approx(5.0, rel=1e-4)
    assert float((acts > 0).sum(dim=1).float().mean()) == pytest.approx(5.0, rel=0.05)
    head_view = toy.layout.split(x)
    assert torch.equal(head_view[:, 2], x[:, 16:24])


@pytest.mark.parametrize("exponent, max_over_min", [(1.0, 10.0), (0.5, 4.0), (2.0, 30.0)])
def test_zipfian_config_sums_to_the_requested_mean_l0(exponent, max_over_min):
    config = zipfian_for_mean_l0(512, 5.0, exponent, max_over_min)
    probabilities = config.generate(512)  # SAELens's own generator
    assert float(probabilities.sum()) == pytest.approx(5.0, rel=1e-4)
    assert config.max_prob / config.min_prob == pytest.approx(max_over_min)
    assert (probabilities[:-1] >= probabilities[1:]).all()


def test_constant_firing_and_correlations_come_from_sae_lens():
    correlation = LowRankCorrelationConfig(rank=4, correlation_scale=0.2, seed=0)
    toy = make_multi_head_toy(MultiHeadToyConfig(**SMALL, firing="constant", correlation=correlation))
    generator = toy.synthetic_model.activation_generator
    assert torch.allclose(generator.firing_probabilities, torch.full((64,), 5.0 / 64))
    assert generator.low_rank_correlation is not None


def test_the_ground_truth_is_a_function_of_the_seed():
    first = make_multi_head_toy(MultiHeadToyConfig(**SMALL, single_head_fraction=0.5, seed=3))
    again = make_multi_head_toy(MultiHeadToyConfig(**SMALL, single_head_fraction=0.5, seed=3))
    other = make_multi_head_toy(MultiHeadToyConfig(**SMALL, single_head_fraction=0.5, seed=4))
    assert torch.equal(first.features, again.features)
    assert torch.equal(first.feature_heads, again.feature_heads)
    assert not torch.equal(first.features, other.features)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"single_head_fraction": 1.5}, "single_head_fraction must be in"),
        ({"single_head_fraction": 0.5, "heads_per_multi_head_feature": 1}, "between 2 and n_heads=4"),
        ({"single_head_fraction": 0.5, "heads_per_multi_head_feature": 5}, "between 2 and n_heads=4"),
        ({"firing": "uniform"}, "firing must be one of"),
        ({"mean_l0": 0.0}, "mean_l0 must be in"),
        ({"n_heads": 0}, "must be positive"),
    ],
)
def test_bad_toy_configs_say_what_is_valid(overrides, message):
    with pytest.raises(ValueError, match=message):
        MultiHeadToyConfig(**{**SMALL, **overrides})


def test_impossible_zipfian_mean_l0_is_refused():
    with pytest.raises(ValueError, match="lower mean_l0 or max_over_min"):
        zipfian_for_mean_l0(16, 10.0, 1.0, 10.0)
