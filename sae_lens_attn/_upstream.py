"""Narrow workarounds for bugs in the libraries we build on, one function each.

Every workaround names the bug, the versions it was seen with, and the test that pins it
(`tests/test_upstream.py`): when that test starts failing, upstream is fixed and the
workaround can go.
"""

from __future__ import annotations

import logging
import re
import warnings
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


# Upstream warnings that tell our users nothing true or actionable, each pinned by
# (message regex, category, module regex) so that nothing else is hidden
# (tests/test_upstream.py checks that each still occurs upstream and that only it is hidden).
KNOWN_UPSTREAM_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # sae_lens 6.54 `ActivationsStore.__init__` compares the dataset's rows with the
    # training *tokens* (rows x context_size are what count): wrong for every run.
    (r"The training dataset contains fewer samples \(\d+\) than the number of samples required",
     UserWarning, r"sae_lens\.training\.activations_store\Z"),
    # torch's advice to sae_lens's own `torch.tensor(row)` on pretokenized rows.
    (r"To copy construct from a tensor, it is recommended",
     UserWarning, r"sae_lens\.training\.activations_store\Z"),
    # torch 2.x deprecation inside eindex (used by sae_dashboard), three times per dashboard.
    (r"Using a non-tuple sequence for multidimensional indexing is deprecated",
     UserWarning, r"eindex\.indexing\Z"),
)

# sae_lens's runner logs these whenever a model or dataset is passed in; our runner always
# passes the hook_z source's model and our corpus, on purpose.
KNOWN_UPSTREAM_LOG_MESSAGES: tuple[str, ...] = (
    r"You just passed in a (dataset|model) which will override the one specified in your configuration",
    # the multi-SAE runner's versions of the same notice (sae_lens 6.54)
    r"override_(dataset|model) overrides cfg\.(dataset_path|model_name)=",
)


class _KnownLogMessages(logging.Filter):
    """Drops the `sae_lens` log records listed in `KNOWN_UPSTREAM_LOG_MESSAGES`."""

    patterns = [re.compile(pattern) for pattern in KNOWN_UPSTREAM_LOG_MESSAGES]

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(p.match(record.getMessage()) for p in self.patterns)


def silence_known_upstream_warnings() -> None:
    """Hide exactly the upstream warnings and log lines listed above (idempotent).

    The command line calls this; library code leaves the process's warning filters alone.
    """
    for message, category, module in KNOWN_UPSTREAM_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    sae_lens_logger = logging.getLogger("sae_lens")
    if not any(isinstance(f, _KnownLogMessages) for f in sae_lens_logger.filters):
        sae_lens_logger.addFilter(_KnownLogMessages())


class _DescriptionOnly:
    """A stand-in for a tqdm bar that takes descriptions and ignores `update`."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def set_description(self, text: str) -> None:
        self._bar.set_description(text)

    def update(self, n: float = 1) -> None:
        pass


def progress_every_step(trainer: Any) -> None:
    """Make SAELens's "Training SAE" bar move on every step (in place, on one trainer).

    sae_lens 6.54's `SAETrainer._update_pbar` advances the bar only every 100 steps, so a
    run of fewer than 100 steps sits at 0% until it ends. This advances it by each step's
    tokens and still lets upstream write the loss description every 100 steps.
    """
    upstream_update = trainer._update_pbar

    def update(step_output: Any, pbar: Any, update_interval: int = 100) -> None:
        # the last step may pass the total (training stops at >= total): stop the bar at 100%
        pbar.update(max(0, min(trainer.cfg.train_batch_size_samples, pbar.total - pbar.n)))
        upstream_update(step_output, _DescriptionOnly(pbar), update_interval)

    trainer._update_pbar = update


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
