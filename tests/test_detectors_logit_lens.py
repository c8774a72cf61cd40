"""Logit-lens classes: planted prediction / suppression / partition features are classified."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from sae_lens_attn.attribution.logit_lens import (
    moments,
    sae_output_directions,
    unembed_through_final_ln,
)
from sae_lens_attn.detectors.logit_lens_classes import (
    LogitLensClassDetector,
    LogitLensThresholds,
    logit_lens_classes,
    skew_kurtosis_figure,
)
from sae_lens_attn.sources.head_layout import HeadLayout
from tests.conftest import make_tiny_model

VOCAB = 2000


def _planted_logit_weights() -> torch.Tensor:
    """Rows: prediction, suppression, partition, Gaussian, constant."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(5, VOCAB, generator=generator) * 0.1
    weights = noise.clone()
    weights[0, :20] += 3.0  # promotes 1% of tokens
    weights[1, :20] -= 3.0  # suppresses 1%
    weights[2] += torch.where(torch.arange(VOCAB) % 2 == 0, 1.0, -1.0)  # half up, half down
    weights[4] = 0.7
    return weights


def test_planted_classes_are_found_with_the_default_thresholds():
    classes, score = logit_lens_classes(moments(_planted_logit_weights()))
    assert classes == ["prediction", "suppression", "partition", None, None]
    stats = moments(_planted_logit_weights())
    assert score[0] == pytest.approx(stats.skewness[0].item())
    assert score[1] == pytest.approx(-stats.skewness[1].item())
    assert score[2] == pytest.approx(3 - stats.kurtosis[2].item()) and score[3] == 0.0


def test_thresholds_decide_the_classes():
    stats = moments(_planted_logit_weights())
    strict = LogitLensThresholds(min_kurtosis=1e6, partition_max_kurtosis=0.5)
    assert logit_lens_classes(stats, strict)[0] == [None] * 5
    with pytest.raises(ValueError, match="must be below min_kurtosis"):
        LogitLensThresholds(min_kurtosis=2.0, partition_max_kurtosis=2.5)


def test_detector_rows_carry_scipy_statistics_of_each_feature_through_the_final_ln():
    model = make_tiny_model()
    layout = HeadLayout.for_model(model, layer=1)
    sae = StandardSAE(StandardSAEConfig(d_in=layout.d_in, d_sae=12))
    layout.store_in(sae)
    torch.nn.init.normal_(sae.W_dec)
    with torch.no_grad():
        sae.W_dec[3] = 0.0  # no output at all
        model.ln_final.w.copy_(torch.linspace(0.2, 3.0, model.cfg.d_model))
    rows = LogitLensClassDetector().detect(model, sae, features=[0, 3, 5, 7], top_k=3)
    assert [row.feature for row in rows] == [0, 3, 5, 7]
    weights = (
        sae_output_directions(sae, model, layout)[[0, 5, 7]] @ unembed_through_final_ln(model)
    ).double().numpy()
    kept = [rows[0], rows[2], rows[3]]
    np.testing.assert_allclose([r.evidence["skewness"] for r in kept], scipy.stats.skew(weights, axis=1), rtol=1e-4)
    np.testing.assert_allclose(
        [r.evidence["kurtosis"] for r in kept], scipy.stats.kurtosis(weights, axis=1, fisher=False), rtol=1e-4
    )
    assert rows[0].evidence["top_tokens"] == np.argsort(-weights[0])[:3].tolist()
    assert rows[1].family is None and math.isnan(rows[1].score) and not rows[1].live
    assert rows[1].evidence["summary"] == "dead: zero or non-finite decoder row"


def test_skew_kurtosis_figure_has_one_trace_per_class_present():
    model = make_tiny_model()
    layout = HeadLayout.for_model(model, layer=0)
    sae = StandardSAE(StandardSAEConfig(d_in=layout.d_in, d_sae=6))
    layout.store_in(sae)
    rows = LogitLensClassDetector().detect(model, sae)
    figure = skew_kurtosis_figure(rows)
    assert sum(len(trace.x) for trace in figure.data) == 6
    assert figure.layout.yaxis.type == "log"
