"""SAELens pretrained SAEs by name: `RELEASE/SAE_ID`, loaded with `SAE.from_pretrained`.

A release is a name in SAELens's pretrained registry (`sae_lens/pretrained_saes.yaml`,
read by `get_pretrained_saes_directory`), e.g. `gpt2-small-hook-z-kk`; no release name
holds a `/`, so `gpt2-small-hook-z-kk/blocks.5.hook_z` splits at the first `/` into the
release and the SAE id (ids may hold `/`). The files come from the Hugging Face hub or
its local cache (`$HF_HOME/hub`, `HF_HUB_OFFLINE=1` for offline use).

`check_pretrained_sae` looks the name up in the registry and reads only the SAE's config
(a few hundred bytes) to check that its hook is an attention `hook_z`, so a wrong name or
hook fails in seconds, before any weights or model load; `load_pretrained_sae` then
loads the SAE itself.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sae_lens_attn.errors import InvalidInputError

if TYPE_CHECKING:
    from sae_lens import SAE

HOOK_Z = re.compile(r"^blocks\.\d+\.attn\.hook_z$")
EXAMPLE = "gpt2-small-hook-z-kk/blocks.5.hook_z"


class HubUnavailableError(RuntimeError):
    """The SAE's files are neither reachable on the hub nor in the local cache."""


@dataclass(frozen=True)
class PretrainedSAEName:
    """A SAELens pretrained SAE: `release` in the registry and `sae_id` in that release."""

    release: str
    sae_id: str

    def __str__(self) -> str:
        return f"{self.release}/{self.sae_id}"


def pretrained_releases() -> dict[str, Any]:
    """SAELens's pretrained registry: release name -> `PretrainedSAELookup`."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def parse_pretrained_name(text: str, option: str = "--sae") -> PretrainedSAEName:
    """`RELEASE/SAE_ID` -> `PretrainedSAEName`, both parts checked against the registry;
    an `InvalidInputError` naming the closest releases or ids otherwise."""
    registry = pretrained_releases()
    release, slash, sae_id = str(text).partition("/")
    if release not in registry:
        close = difflib.get_close_matches(release, list(registry), n=3, cutoff=0.6)
        hint = f"closest releases: {', '.join(close)}" if close else f"for example {EXAMPLE}"
        raise InvalidInputError(
            f"{option} {text}: no such SAE folder, and {release!r} is not a SAELens "
            f"pretrained release ({hint}); expected a saved SAE folder or RELEASE/SAE_ID"
        )
    ids = list(registry[release].saes_map)
    if not slash or not sae_id:
        raise InvalidInputError(
            f"{option} {text}: give the SAE id too, as RELEASE/SAE_ID (e.g. {release}/{ids[0]}; "
            f"{len(ids)} ids in this release)"
        )
    if sae_id not in ids:
        close = difflib.get_close_matches(sae_id, ids, n=3, cutoff=0.6)
        hint = ", ".join(close) if close else ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
        raise InvalidInputError(
            f"{option} {text}: release {release!r} has no SAE id {sae_id!r} "
            f"({'closest' if close else 'its ids'}: {hint})"
        )
    return PretrainedSAEName(release, sae_id)


def check_hook_z(hook_name: object, what: str) -> None:
    """`hook_name` is an attention `hook_z` (`blocks.L.attn.hook_z`), else an
    `InvalidInputError` saying so for `what` (e.g. `--sae NAME`)."""
    if not isinstance(hook_name, str) or not HOOK_Z.match(hook_name):
        raise InvalidInputError(
            f"{what}: this SAE reads {hook_name!r}, not an attention hook_z "
            "(blocks.L.attn.hook_z); sae-lens-attn works on hook_z SAEs, such as the "
            "gpt2-small-hook-z-kk release"
        )


def check_pretrained_sae(
    name: PretrainedSAEName, option: str = "--sae", hook_z: bool = True
) -> dict[str, Any]:
    """The SAE's config (SAELens's own config loader; only the config file is fetched),
    checked to be on an attention `hook_z` (`blocks.L.attn.hook_z`) unless `hook_z` is
    False (e.g. an upstream SAE of `circuit`, which may read any hook)."""
    from sae_lens.loading.pretrained_sae_loaders import load_sae_config_from_huggingface

    with _hub_errors(name, option):
        cfg = load_sae_config_from_huggingface(name.release, name.sae_id)
    if hook_z:
        check_hook_z(
            (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name"), f"{option} {name}"
        )
    return cfg


def load_pretrained_sae(
    name: str | PretrainedSAEName,
    device: str = "cpu",
    hook_z: bool = True,
    option: str = "--sae",
    allow_nonfinite: bool = False,
) -> SAE:
    """A SAELens pretrained hook_z SAE, e.g. `load_pretrained_sae("gpt2-small-hook-z-kk/
    blocks.5.hook_z")`, through `SAE.from_pretrained` after `check_pretrained_sae`.

    The SAE keeps SAELens's `reshape_activations="hook_z"` (input `[..., n_heads,
    d_head]`), with its input shape checked (`_upstream.guard_hook_z_input`); the head
    layout follows from its hook name and the model (`HeadLayout.from_sae`). `hook_z=False`
    accepts an SAE on any hook. Its weights are checked once loaded, as a saved folder's
    (`weight_check.check_loaded_sae`; `allow_nonfinite` skips features with NaN/inf).
    """
    from sae_lens import SAE

    from sae_lens_attn._upstream import guard_hook_z_input
    from sae_lens_attn.sources.weight_check import check_loaded_sae

    if not isinstance(name, PretrainedSAEName):
        name = parse_pretrained_name(name, option)
    check_pretrained_sae(name, option, hook_z)
    with _hub_errors(name, option):
        sae = SAE.from_pretrained(name.release, name.sae_id, device=device)
    check_loaded_sae(sae, f"{option} {name}", allow_nonfinite=allow_nonfinite)
    return guard_hook_z_input(sae)


@contextlib.contextmanager
def _hub_errors(name: PretrainedSAEName, option: str) -> Iterator[None]:
    """Turns a failed download (offline, not in the cache) into one `HubUnavailableError`."""
    try:
        yield
    except (OSError, ConnectionError) as error:  # hf_hub and requests errors derive from these
        repo = pretrained_releases()[name.release].repo_id
        raise HubUnavailableError(
            f"{option} {name}: could not fetch it from the Hugging Face hub repo {repo} nor "
            f"find it in the local cache ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:300]}); offline, fill the cache ($HF_HOME/hub) "
            "on a machine with network first (docs/published-saes.md)"
        ) from error
