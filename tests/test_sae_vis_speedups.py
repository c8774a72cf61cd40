"""`dashboard.sae_vis_speedups` returns what sae_dashboard's own helpers return: the
colour of every value at and around each of the colormap's boundaries, token strings of
ints, flat and nested lists, and a whole page's per-feature data built both ways."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_dashboard.html_fns import BG_COLOR_MAP, bgColorMap
from sae_dashboard.utils_fns import to_str_tokens
from sae_lens import StandardSAE, StandardSAEConfig

from sae_lens_attn.dashboard.config import DashboardConfig
from sae_lens_attn.dashboard.page import sae_dashboard_js_data
from sae_lens_attn.dashboard.sae_vis import run_sae_vis
from sae_lens_attn.dashboard.sae_vis_speedups import (
    background_color,
    token_strings,
)
from sae_lens_attn.sources.head_layout import HeadLayout

pytestmark = pytest.mark.usefixtures("one_thread")


def test_background_color_equals_bgcolormap_at_every_boundary():
    n = BG_COLOR_MAP.N
    values = [-1.0, -1e-9, 0.0, 1.0, 1.0 + 1e-9, 2.5, float("nan"), float("inf"), -float("inf")]
    for i in range(n + 1):
        edge = i / n
        values += [edge, np.nextafter(edge, -1.0), np.nextafter(edge, 2.0)]
    values += torch.rand(2000, generator=torch.Generator().manual_seed(0)).tolist()
    values += [np.float32(v) for v in (0.3, 0.999999, 1.0)] + [np.float64(0.5)]
    for value in values:
        assert background_color(value) == bgColorMap(value), value


def decode(token: int) -> str:
    return f"<{token}>"


def decode_fn(tokens):
    return decode(tokens) if isinstance(tokens, int) else [decode(int(t)) for t in tokens]


@pytest.mark.parametrize("tokens", [7, [], [3, 1, 4], [[1, 2], [3, 4]], torch.tensor([5, 6])])
def test_token_strings_equal_to_str_tokens(tokens):
    assert token_strings(to_str_tokens, decode_fn, tokens) == to_str_tokens(decode_fn, tokens)


def test_page_data_is_the_same_with_the_fast_helpers(tiny_model, tiny_tokens):
    """A real feature page's data (sequences with active tokens, histograms, tables)."""
    layout = HeadLayout.for_model(tiny_model, 1)
    generator = torch.Generator().manual_seed(3)
    sae = StandardSAE(StandardSAEConfig(d_in=layout.d_in, d_sae=12))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(layout.d_in, 12, generator=generator) * 0.3)
        sae.W_dec.copy_(torch.randn(12, layout.d_in, generator=generator) * 0.3)
    data = run_sae_vis(tiny_model, sae, layout, tiny_tokens, list(range(12)), DashboardConfig())
    display = lambda token: f"t{token}\u00a0"  # noqa: E731 (a display string with a non-ASCII space)
    ours = sae_dashboard_js_data(data, display)  # with `fast_token_helpers`
    decode_fn = lambda ids: display(ids) if isinstance(ids, int) else [display(int(t)) for t in ids]  # noqa: E731
    layout = data.cfg.feature_centric_layout
    html_objects = {
        str(feature): feature_data._get_html_data_feature_centric(layout, decode_fn)
        for feature, feature_data in data.feature_data_dict.items()
    }
    theirs = (
        html_objects["0"].html_data,
        {key: html.js_data for key, html in html_objects.items()},
    )
    assert ours == theirs
    colours = [
        token["bgColor"]
        for feature in theirs[1].values()
        for group in feature["tokenData"].values()
        for sequence in group["data"]
        for token in sequence
        if "bgColor" in token
    ]
    assert len(set(colours)) > 10  # many colours compared, not just white
