"""Narrow workarounds for bugs in the libraries we build on, one function each.

Every workaround names the bug, the versions it was seen with, and the test that pins it
(`tests/test_upstream.py`): when that test starts failing, upstream is fixed and the
workaround can go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


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


def guard_hook_z_input(sae: Any) -> Any:
    """Check an SAE's hook_z-shaped input before SAELens's reshaping caches `d_head`.

    sae_lens 6.54 (`SAE.turn_on_forward_pass_hook_z_reshaping`): the first input sets
    `sae.d_head = x.shape[-1]` unchecked. A flat `[n, d_in]` input then raises inside
    torch, and the object keeps `d_head = d_in`, so later correct calls decode to
    `[..., 1, d_in]`. This replaces the SAE's own `reshape_fn_in` with one that refuses
    anything but `[..., n_heads, d_head]` with `n_heads * d_head = d_in` (and the cached
    `d_head`, once known) before touching the object. A no-op without hook_z reshaping;
    `turn_on_forward_pass_hook_z_reshaping` installs SAELens's unchecked version again.
    Pinned by `tests/test_hostile_numerics.py::test_flat_input_leaves_hook_z_sae_intact`.
    """
    from sae_lens_attn.errors import InvalidInputError

    if not getattr(sae, "hook_z_reshaping_mode", False):
        return sae
    d_in = sae.cfg.d_in

    def reshape_fn_in(x: torch.Tensor) -> torch.Tensor:  # [..., n_heads, d_head] -> [..., d_in]
        d_head = getattr(sae, "d_head", None)
        if x.ndim < 2 or x.shape[-2] * x.shape[-1] != d_in or (d_head and x.shape[-1] != d_head):
            known = f", d_head={d_head}" if d_head else ""
            raise InvalidInputError(
                f"SAE input of shape {list(x.shape)}: this SAE has reshape_activations="
                f"'hook_z' and takes [..., n_heads, d_head] with n_heads * d_head = {d_in}"
                f"{known}; pass hook_z unflattened, or call "
                "sae.turn_off_forward_pass_hook_z_reshaping() to pass [..., d_in]"
            )
        sae.d_head = x.shape[-1]
        return x.flatten(-2)

    sae.reshape_fn_in = reshape_fn_in
    return sae
