"""Logit-lens math: output directions, logit weight statistics (against scipy), top tokens."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from sae_lens_attn.attribution.logit_lens import (
    feature_output_directions,
    iter_logit_weights,
    logit_weight_stats,
    moments,
    sae_output_directions,
    top_logit_tokens,
    unembed_through_final_ln,
)
from sae_lens_attn.sources.head_layout import HeadLayout
from tests.conftest import make_tiny_model


def _heavy_tailed_directions(n: int, d_model: int, seed: int = 0) -> torch.Tensor:
    """Directions whose logit weights range from Gaussian-like to very skewed."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(n, d_model, generator=generator)
    directions[: n // 2] *= torch.linspace(0.1, 3.0, n // 2)[:, None]
    return directions


def test_output_directions_equal_sum_over_heads_of_decoder_slices_times_W_O():
    generator = torch.Generator().manual_seed(0)
    n_heads, d_head, d_model, d_sae = 3, 4, 10, 7
    W_dec = torch.randn(d_sae, n_heads * d_head, generator=generator)
    W_O = torch.randn(n_heads, d_head, d_model, generator=generator)
    expected = torch.zeros(d_sae, d_model)
    for j in range(d_sae):
        for h in range(n_heads):
            expected[j] += W_dec[j, h * d_head : (h + 1) * d_head] @ W_O[h]
    torch.testing.assert_close(feature_output_directions(W_dec, W_O), expected)


def test_sae_output_directions_use_only_the_layout_heads_in_layout_order():
    model = make_tiny_model(n_heads=4, d_head=8, d_model=32)
    layout = HeadLayout.for_model(model, layer=1, heads=[2, 0])
    sae = StandardSAE(StandardSAEConfig(d_in=layout.d_in, d_sae=5))
    torch.nn.init.normal_(sae.W_dec)
    layout.store_in(sae)
    expected = (
        sae.W_dec[:, :8] @ model.W_O[1, 2] + sae.W_dec[:, 8:] @ model.W_O[1, 0]
    ).detach()
    torch.testing.assert_close(sae_output_directions(sae, model), expected)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_logit_weight_stats_equal_scipy(chunk_size: int):
    generator = torch.Generator().manual_seed(1)
    directions = _heavy_tailed_directions(12, 16)
    W_U = torch.randn(16, 500, generator=generator)
    W_U[:, :5] *= 20  # a few tokens far out in the tails: large skewness and kurtosis
    stats = logit_weight_stats(directions, W_U, chunk_size=chunk_size)
    weights = (directions.double() @ W_U.double()).numpy()
    np.testing.assert_allclose(stats.mean, weights.mean(axis=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(stats.std, weights.std(axis=1), rtol=1e-5)
    np.testing.assert_allclose(stats.skewness, scipy.stats.skew(weights, axis=1), rtol=1e-4)
    np.testing.assert_allclose(
        stats.kurtosis, scipy.stats.kurtosis(weights, axis=1, fisher=False), rtol=1e-4
    )
    assert stats.kurtosis.max() > 10  # the heavy tails really are exercised


def test_constant_logit_weights_give_nan_shape_statistics_like_scipy():
    directions = torch.zeros(2, 4)
    stats = logit_weight_stats(directions, torch.randn(4, 30))
    assert torch.equal(stats.std, torch.zeros(2))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        references = scipy.stats.skew(np.zeros(30)), scipy.stats.kurtosis(np.zeros(30))
    assert np.isnan(references).all()
    assert torch.isnan(stats.skewness).all() and torch.isnan(stats.kurtosis).all()


@pytest.mark.parametrize("normalization_type", ["LN", "RMS"])
def test_unembed_through_final_ln_equals_transformer_lens_fold_ln(normalization_type: str):
    model = make_tiny_model(d_model=32, n_heads=2, d_head=16)
    if normalization_type == "RMS":
        model = _rms_copy(model)
    with torch.no_grad():
        model.ln_final.w.copy_(torch.linspace(0.5, 2.0, 32))
    ours = unembed_through_final_ln(model)
    model.process_weights_(fold_ln=True, center_writing_weights=False, center_unembed=False)
    torch.testing.assert_close(ours, model.W_U.detach())
    # once folded, there is nothing left to fold
    torch.testing.assert_close(unembed_through_final_ln(model), model.W_U.detach())


def _rms_copy(model):
    from transformer_lens import HookedTransformer

    cfg = model.cfg.to_dict()
    cfg["normalization_type"] = "RMS"
    cfg.pop("n_params", None)
    rms = HookedTransformer(type(model.cfg).from_dict(cfg))
    rms.eval()
    return rms


def test_top_logit_tokens_match_a_full_sort_of_the_logit_weights():
    generator = torch.Generator().manual_seed(2)
    directions = _heavy_tailed_directions(9, 16)
    W_U = torch.randn(16, 200, generator=generator)
    top_v, top_i, bottom_v, bottom_i = top_logit_tokens(directions, W_U, k=4, chunk_size=4)
    weights = directions @ W_U
    order = weights.argsort(dim=1, descending=True)
    assert torch.equal(top_i, order[:, :4])
    assert torch.equal(bottom_i, order.flip(1)[:, :4])
    torch.testing.assert_close(top_v, weights.gather(1, order[:, :4]))
    torch.testing.assert_close(bottom_v, weights.gather(1, order.flip(1)[:, :4]))


def test_logit_weight_chunks_cover_every_feature_once():
    directions = torch.randn(10, 8)
    starts = [(start, w.shape[0]) for start, w in iter_logit_weights(directions, torch.randn(8, 20), 4)]
    assert starts == [(0, 4), (4, 4), (8, 2)]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: feature_output_directions(torch.zeros(3, 10), torch.zeros(2, 4, 6)), "n_heads"),
        (lambda: logit_weight_stats(torch.zeros(3, 5), torch.zeros(6, 9)), "same d_model"),
        (lambda: logit_weight_stats(torch.zeros(3, 6), torch.zeros(6, 9), 0), "chunk_size"),
        (lambda: top_logit_tokens(torch.zeros(3, 6), torch.zeros(6, 9), k=10), "k must be"),
    ],
)
def test_bad_shapes_raise_value_errors_that_say_what_is_expected(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_constant_float32_logit_weights_give_nan_not_rounding_noise():
    weights = torch.full((1, 2000), 0.7)  # float32: the mean is not exactly 0.7
    stats = moments(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(scipy.stats.skew(weights.double().numpy()[0]))  # exact in float64
    assert torch.isnan(stats.skewness).all() and torch.isnan(stats.kurtosis).all()
