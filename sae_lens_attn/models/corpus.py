"""The embedded corpus: the running Python's standard-library source files.

Every machine that runs this package has them, so the embedded model can be trained and
evaluated without a download. Files are ordered by the SHA-1 of their path relative to the
stdlib folder (a fixed, version-independent shuffle), and a file belongs to the held-out
"test" split when that hash is 0 modulo `TEST_EVERY`. The corpus differs between Python
versions (the shipped model was trained on CPython 3.11; see `embedded/config.json`).
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

SPLITS = ("train", "test")
TEST_EVERY = 20  # one file in 20 is held out
SKIPPED_FOLDERS = frozenset({"site-packages", "__pycache__"})


def stdlib_dir() -> Path:
    """The standard library folder of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def _path_hash(relative: str) -> int:
    return int.from_bytes(hashlib.sha1(relative.encode("utf-8")).digest()[:8], "big")


def corpus_files(split: str = "train", root: Path | None = None) -> list[Path]:
    """The `.py` files of one split, in their fixed hash order (site-packages excluded)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    root = stdlib_dir() if root is None else Path(root)
    if not root.is_dir():
        raise ValueError(f"standard library folder {root} does not exist")
    keyed = []
    for path in _python_files(root):
        relative = path.relative_to(root).as_posix()
        key = _path_hash(relative)
        if (key % TEST_EVERY == 0) == (split == "test"):
            keyed.append((key, relative, path))
    keyed.sort()
    return [path for _, _, path in keyed]


def _python_files(root: Path) -> Iterator[Path]:
    """`.py` files under `root`, not descending into `site-packages` (which can hold
    tens of thousands of installed files) or `__pycache__`."""
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [name for name in subfolders if name not in SKIPPED_FOLDERS]
        for name in names:
            path = Path(folder, name)
            if name.endswith(".py") and path.is_file():
                yield path


def iter_corpus_texts(split: str = "train", root: Path | None = None) -> Iterator[str]:
    """File contents of one split, in order (bytes decoded as UTF-8, bad bytes replaced)."""
    for path in corpus_files(split, root):
        yield path.read_bytes().decode("utf-8", errors="replace")
