"""Exact, faster stand-ins for two per-token helpers of sae_dashboard's HTML data.

`FeatureData._get_html_data_feature_centric` (sae_dashboard 0.8, `components.py`) colours
every active token with `html_fns.bgColorMap` (a matplotlib colormap call and `rgb2hex`
per token) and turns token ids into strings with `utils_fns.to_str_tokens` (a tensor and
a numpy reshape per call, once per token position). On a gpt2-small-shaped atlas they were
about half of that function's time. `fast_token_helpers` swaps them, inside
`sae_dashboard.components` only and for the duration of a `with` block, for:

- `background_color`: `bgColorMap` read from a table of the colormap's `N` colours, indexed
  as matplotlib's `Colormap.__call__` indexes a float in [0, 1] (`int(x * N)`, with 1.0 the
  last colour);
- `token_strings`: `to_str_tokens` for an int or a flat list of ints (a list of
  `decode_fn(id)`); anything else goes to sae_dashboard's own function.

Both return what the originals return (tests/test_sae_vis_speedups.py compares them on
every colour boundary and on a real page's data).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any


@functools.cache
def _colour_table() -> tuple[str, ...]:
    """`bgColorMap`'s colour for each of its colormap's `N` entries, as `#rrggbb`."""
    from matplotlib import colors
    from sae_dashboard.html_fns import BG_COLOR_MAP

    return tuple(colors.rgb2hex(BG_COLOR_MAP(i)) for i in range(BG_COLOR_MAP.N))


def background_color(x: float) -> str:
    """`sae_dashboard.html_fns.bgColorMap(x)`: x clipped to [0, 1], white to dark orange."""
    table = _colour_table()
    n = len(table)
    scaled = max(0.0, min(1.0, x)) * n
    return table[n - 1 if scaled >= n else int(scaled)]


def token_strings(
    original: Callable[..., Any], decode_fn: Callable[[Any], Any], tokens: Any
) -> Any:
    """`original(decode_fn, tokens)` (sae_dashboard's `to_str_tokens`), without its tensor
    and numpy round trip for an int or a flat list of ints."""
    if type(tokens) is int:
        return decode_fn(tokens)
    if type(tokens) is list and all(type(token) is int for token in tokens):
        return [decode_fn(token) for token in tokens]
    return original(decode_fn, tokens)


@contextlib.contextmanager
def fast_token_helpers() -> Iterator[None]:
    """Inside the block, `sae_dashboard.components` uses `background_color` and
    `token_strings` instead of `bgColorMap` and `to_str_tokens`; restored afterwards."""
    from sae_dashboard import components

    saved = components.bgColorMap, components.to_str_tokens
    components.bgColorMap = background_color
    components.to_str_tokens = functools.partial(token_strings, saved[1])
    try:
        yield
    finally:
        components.bgColorMap, components.to_str_tokens = saved
