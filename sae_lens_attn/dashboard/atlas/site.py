"""The atlas's folder: what marks one, where an unfinished one is staged, and publishing.

A site is built in a staging folder beside it (`.<name>.atlas-partial`); `atlas.json`
there records the settings it was started with, so `--resume` continues only the same
atlas, and the SHA-256 of every finished shard's files (`record_shard`), so `--resume`
rebuilds a shard whose files were changed or damaged (`shard_is_intact`) instead of
serving it. When every shard is written, the staging folder replaces the site in two renames
(an earlier atlas is moved aside first, then deleted): the site folder is either the old
atlas or the complete new one, never half-written. A folder that exists, is not empty and
has no atlas marker is never written into or removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from sae_lens_attn._atomic import atomic_write_text
from sae_lens_attn.errors import InvalidInputError

MARKER = "atlas.json"
FORMAT = "sae-lens-attn atlas"
VERSION = 1


def staging_folder(site: Path) -> Path:
    """Where the site is built before it is published."""
    return site.parent / f".{site.name}.atlas-partial"


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The atlas marker of `folder`, or None when it has none (or not one of ours)."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == FORMAT else None


def check_site(site: Path, option: str = "--out") -> None:
    """`site` is new, an empty folder or an atlas (which a new build replaces); else an
    `InvalidInputError`: an existing folder of other files is never overwritten."""
    if not site.exists():
        return
    if not site.is_dir():
        raise InvalidInputError(
            f"{option} {site}: is a file; expected a folder for the atlas "
            "(new, empty, or an atlas written before)"
        )
    if read_marker(site) is None and any(site.iterdir()):
        raise InvalidInputError(
            f"{option} {site}: exists and is not an atlas (no {MARKER} written by "
            "`sae-lens-attn atlas`); choose a new or empty folder, or an earlier atlas to replace"
        )


def start_staging(site: Path, settings: dict[str, Any], resume: bool) -> tuple[Path, bool]:
    """The staging folder, and whether it continues an earlier run: with `resume` an
    unfinished atlas with the same `settings` is kept, one with other settings is an
    `InvalidInputError`; otherwise any unfinished atlas is removed and started afresh."""
    staging = staging_folder(site)
    marker = read_marker(staging) if staging.is_dir() else None
    if resume and marker is not None:
        if marker.get("settings") != settings:
            changed = sorted(
                key
                for key in {*settings, *marker.get("settings", {})}
                if settings.get(key) != marker.get("settings", {}).get(key)
            )
            raise InvalidInputError(
                f"--resume: the unfinished atlas in {staging} was started with other settings "
                f"({', '.join(changed)} differ); run without --resume to start over"
            )
        return staging, True
    if staging.exists():
        if marker is None and any(staging.iterdir()):
            raise InvalidInputError(f"{staging}: exists and is not an unfinished atlas; remove it")
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    write_marker(staging, settings, complete=False)
    return staging, False


def write_marker(folder: Path, settings: dict[str, Any], complete: bool, **extra: Any) -> None:
    """`atlas.json` of `folder`, keeping the shard checksums it records."""
    previous = read_marker(folder) or {}
    marker = {
        "format": FORMAT,
        "version": VERSION,
        "complete": complete,
        "settings": settings,
        SHARDS: previous.get(SHARDS, {}),
        **extra,
    }
    atomic_write_text(folder / MARKER, json.dumps(marker, indent=1))


SHARDS = "shards"


def file_checksum(path: Path) -> str:
    """SHA-256 of the file's bytes, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_shard(folder: Path, shard: int, files: list[Path]) -> None:
    """Record in `atlas.json` the checksum of each of shard `shard`'s `files` (written,
    inside `folder`)."""
    marker = read_marker(folder)
    if marker is None:
        raise InvalidInputError(f"{folder}: no {MARKER}; not an atlas being built")
    marker.setdefault(SHARDS, {})[str(shard)] = {
        path.relative_to(folder).as_posix(): file_checksum(path) for path in files
    }
    atomic_write_text(folder / MARKER, json.dumps(marker, indent=1))


def shard_is_intact(folder: Path, shard: int, marker: dict[str, Any] | None) -> bool:
    """Whether `marker` (this folder's `atlas.json`) records shard `shard` as finished and
    each of its files still has the recorded checksum."""
    recorded = (marker or {}).get(SHARDS, {}).get(str(shard))
    if not recorded:
        return False
    return all(
        (path := folder / name).is_file() and file_checksum(path) == checksum
        for name, checksum in recorded.items()
    )


def publish(staging: Path, site: Path) -> None:
    """Replace `site` (absent, empty or an atlas) by the finished `staging` folder."""
    old = site.parent / f".{site.name}.atlas-old"
    if old.exists():
        shutil.rmtree(old)
    if site.exists():
        os.replace(site, old)
    os.replace(staging, site)
    if old.exists():
        shutil.rmtree(old)
