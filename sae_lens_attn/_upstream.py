"""Narrow workarounds for bugs in the libraries we build on, one function each.

Every workaround names the bug, the versions it was seen with, and the test that pins it
(`tests/test_upstream.py`): when that test starts failing, upstream is fixed and the
workaround can go.
"""

from __future__ import annotations


def disable_datasets_torchvision_formatting() -> None:
    """Stop `datasets` from importing `torchvision.io.VideoReader` when it formats rows as torch.

    datasets 3.6's torch formatter does `from torchvision.io import VideoReader` for every
    value once torchvision is imported (sae_lens imports it through decode-clt), and
    torchvision 0.29 no longer has `VideoReader`: every row of a dataset that SAELens's
    `ActivationsStore` formatted with `set_format(type="torch")` then raises ImportError.
    Telling datasets that torchvision is unavailable skips that branch; nothing else in
    datasets' torch formatting depends on it (videos are not used here). Idempotent.
    """
    import datasets.config

    datasets.config.TORCHVISION_AVAILABLE = False
