"""Training outputs on disk: SAE folders published whole, and `saes.json`, the list of
the SAEs a training run wrote.

`saes.json` is a JSON list of `{name, layer, heads, architecture, path, metrics}`, `path`
relative to the folder holding the file (`"."` when the SAE was saved in that folder
itself). Only `json` and `pathlib` are imported here, so the command line can read the
list without importing torch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sae_lens_attn._atomic import atomic_write_text

SAE_LIST_FILENAME = "saes.json"
SAE_CONFIG_FILENAME = "cfg.json"  # what makes a folder look like a saved SAE (SAE.load_from_disk)
ENTRY_KEYS = ("name", "layer", "heads", "architecture", "path", "metrics")
TIMING_KEYS = ("training_tokens", "training_seconds", "training_seconds_alone")  # training.timing


def sae_list_entry(
    name: str,
    layer: int,
    heads: Sequence[int],
    architecture: str,
    path: str,
    metrics: Mapping[str, Any],
) -> dict[str, Any]:
    """One `saes.json` entry; non-finite or non-numeric metrics are left out (strict JSON)."""
    return {
        "name": name,
        "layer": int(layer),
        "heads": [int(h) for h in heads],
        "architecture": architecture,
        "path": path,
        "metrics": {key: float(value) for key, value in metrics.items() if _is_finite_number(value)},
    }


def training_metrics(sae: Any) -> dict[str, Any]:
    """What training recorded about a trained SAE: SAELens's `training_l0` (mean L0 over
    the last sparsity window) and ours (`training.timing`): `training_tokens`,
    `training_seconds` and `training_seconds_alone` (absent in SAEs saved before they were
    recorded). Not SAELens's `num_dead_features`, which counts features silent for
    `dead_feature_window` training steps, another meaning of "dead" than ours
    (`sae_lens_attn.dead`: never fired on N held-out tokens, added by `train`)."""
    metadata = sae.cfg.metadata
    return {"training_l0": metadata.get("l0"), **{key: metadata.get(key) for key in TIMING_KEYS}}


def write_sae_list(folder: str | Path, entries: Sequence[Mapping[str, Any]]) -> Path:
    """Write `folder/saes.json` atomically; names must be unique."""
    names = [entry["name"] for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"SAE names must be unique, got {duplicates} more than once")
    path = Path(folder) / SAE_LIST_FILENAME
    atomic_write_text(path, json.dumps(list(entries), indent=2) + "\n")
    return path


def read_sae_list(folder: str | Path) -> list[dict[str, Any]]:
    """The entries of `folder/saes.json`; a ValueError saying what is wrong with the file."""
    path = Path(folder) / SAE_LIST_FILENAME
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(entries, list) or not all(
        isinstance(entry, dict)
        and set(ENTRY_KEYS) <= set(entry)
        and isinstance(entry["name"], str)
        and isinstance(entry["path"], str)
        for entry in entries
    ):
        raise ValueError(
            f"{path} must be a list of objects with keys {list(ENTRY_KEYS)} (name and path text)"
        )
    return entries


@contextmanager
def staging_folder(parent: str | Path) -> Iterator[Path]:
    """A fresh hidden folder inside `parent` (created if needed), removed on exit: files
    are written there, then moved into place with `publish_sae_folder` (same filesystem,
    so every move is a rename). A `parent` created here and still empty on exit (a failed
    or interrupted run) is removed too, so a failure leaves no trace of the output."""
    parent = Path(parent)
    created = not parent.exists()
    parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=".staging.", dir=parent))
    try:
        yield staged
    finally:
        shutil.rmtree(staged, ignore_errors=True)
        if created and not any(parent.iterdir()):
            parent.rmdir()


def publish_sae_folder(staged: str | Path, target: str | Path) -> None:
    """Move a saved SAE's files from `staged` into `target` (created if needed; other
    files there are kept). The old `cfg.json` goes first and the new one comes last, so at
    no moment does `target` look like a finished SAE that is not the new one whole."""
    staged, target = Path(staged), Path(target)
    files = sorted(staged.iterdir(), key=lambda path: path.name == SAE_CONFIG_FILENAME)
    if not files or files[-1].name != SAE_CONFIG_FILENAME:
        raise ValueError(f"{staged} holds no saved SAE ({SAE_CONFIG_FILENAME} missing)")
    target.mkdir(parents=True, exist_ok=True)
    (target / SAE_CONFIG_FILENAME).unlink(missing_ok=True)
    for path in files:
        os.replace(path, target / path.name)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
