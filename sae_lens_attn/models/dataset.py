"""Token sequences of the embedded corpus, for training and evaluating on it.

Files are tokenized one at a time with the embedded tokenizer and packed into rows with
SAELens's own `concat_and_batch_sequences`: each row starts with BOS and files are joined by
the `<|endoftext|>` separator, as SAELens packs text datasets itself.

Tokenizing the whole train split takes ~40 s on one CPU core, so `corpus_tokens` keeps the
rows it made in a disk cache (`corpus_cache_dir()`), keyed by the tokenizer's full
definition, the corpus files (paths, sizes, modification times), the split and the row
length: later calls read them back in milliseconds, and any change to those makes a new
key. Set `SAE_LENS_ATTN_CACHE=off` to switch the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sae_lens_attn.models.corpus import SPLITS, corpus_files, iter_corpus_texts

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase


def iter_token_rows(
    tokenizer: PreTrainedTokenizerBase,
    context_size: int,
    split: str = "train",
    root: Path | None = None,
) -> Iterator[torch.Tensor]:
    """`[context_size]` token rows of one corpus split, in corpus order."""
    import torch
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    if context_size < 2:
        raise ValueError(f"context_size must be at least 2, got {context_size}")
    files = (
        torch.tensor(ids, dtype=torch.long)
        for texts in _batched(iter_corpus_texts(split, root), FILES_PER_BATCH)
        for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    )
    return concat_and_batch_sequences(
        tokens_iterator=files,
        context_size=context_size,
        begin_batch_token_id=tokenizer.bos_token_id,
        sequence_separator_token_id=tokenizer.eos_token_id,
    )


FILES_PER_BATCH = 16  # a fast tokenizer encodes a batch on all cores


def _batched(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def corpus_tokens(
    tokenizer: PreTrainedTokenizerBase,
    context_size: int,
    n_sequences: int | None = None,
    split: str = "train",
    root: Path | None = None,
) -> torch.Tensor:
    """`[n_rows, context_size]` token rows (all of the split when `n_sequences` is None)."""
    import itertools

    import torch

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if n_sequences is not None and n_sequences < 1:
        raise ValueError(f"n_sequences must be positive or None, got {n_sequences}")
    cache = _cache_file(tokenizer, context_size, split, root)
    cached = _read_cache(cache, n_sequences)
    if cached is not None:
        _check_enough_rows(cached.shape[0], n_sequences, split, context_size)
        return cached[:n_sequences]
    rows = list(itertools.islice(iter_token_rows(tokenizer, context_size, split, root), n_sequences))
    _check_enough_rows(len(rows), n_sequences, split, context_size)
    tokens = torch.stack(rows)
    _write_cache(cache, tokens, complete=n_sequences is None)
    return tokens


def _check_enough_rows(n_rows: int, n_sequences: int | None, split: str, context_size: int) -> None:
    if n_sequences is not None and n_rows < n_sequences:
        raise ValueError(
            f"the {split!r} split has only {n_rows} rows of {context_size} tokens; "
            f"asked for {n_sequences}"
        )


CACHE_VARIABLE = "SAE_LENS_ATTN_CACHE"


def corpus_cache_dir() -> Path | None:
    """Where tokenized corpus rows are kept: `$SAE_LENS_ATTN_CACHE` (None when it is
    "off"), else `$XDG_CACHE_HOME/sae_lens_attn` or `~/.cache/sae_lens_attn`."""
    configured = os.environ.get(CACHE_VARIABLE, "")
    if configured.lower() == "off":
        return None
    if configured:
        return Path(configured).expanduser() / "corpus_tokens"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sae_lens_attn" / "corpus_tokens"


def _cache_file(
    tokenizer: PreTrainedTokenizerBase, context_size: int, split: str, root: Path | None
) -> Path | None:
    """The cache file of these rows (suffix added by the readers), or None when the cache
    is off or the tokenizer has no serialisable definition (a slow tokenizer)."""
    folder = corpus_cache_dir()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if folder is None or backend is None:
        return None
    digest = hashlib.sha256()
    digest.update(backend.to_str().encode("utf-8"))
    files = [(str(path), *_size_and_mtime(path)) for path in corpus_files(split, root)]
    key = [tokenizer.bos_token_id, tokenizer.eos_token_id, context_size, split, files]
    digest.update(json.dumps(key).encode("utf-8"))
    return folder / f"{split}-{context_size}-{digest.hexdigest()[:24]}"


def _size_and_mtime(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _read_cache(cache: Path | None, n_sequences: int | None) -> torch.Tensor | None:
    """Cached rows if they cover the request: the whole split (`.all.npy`, possibly
    fewer rows than asked for: the caller says so), or a prefix (`.prefix.npy`) of at
    least `n_sequences` rows. A shorter prefix or an unreadable file is ignored."""
    import numpy as np
    import torch

    if cache is None:
        return None
    complete, prefix = cache.with_suffix(".all.npy"), cache.with_suffix(".prefix.npy")
    for path, whole in ((complete, True), (prefix, False)):
        if not path.is_file():
            continue
        try:
            rows = np.load(path)
        except (OSError, ValueError):
            continue
        if whole or (n_sequences is not None and rows.shape[0] >= n_sequences):
            return torch.from_numpy(rows[:n_sequences].astype(np.int64))
    return None


def _write_cache(cache: Path | None, tokens: torch.Tensor, complete: bool) -> None:
    """Save `tokens` (int32) as the whole split or as a prefix; a cache that cannot be
    written is warned about once per call and otherwise ignored."""
    import io

    import numpy as np

    from sae_lens_attn._atomic import atomic_write_bytes

    if cache is None:
        return
    buffer = io.BytesIO()
    np.save(buffer, tokens.numpy().astype(np.int32))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache.with_suffix(".all.npy" if complete else ".prefix.npy"),
                           buffer.getvalue())
    except OSError as error:
        warnings.warn(f"corpus token cache not written ({error}); set {CACHE_VARIABLE}=off "
                      "to skip it", stacklevel=3)


def corpus_dataset(
    context_size: int, n_sequences: int | None = None, split: str = "train"
) -> Dataset:
    """The embedded corpus as a `datasets.Dataset` with an `input_ids` column.

    Rows are `context_size` tokens of the embedded tokenizer, BOS first, in the corpus's
    fixed order: the first `n_sequences` rows of `split` ("train" or "test"), or all.
    Ready for SAELens's `override_dataset` (pretokenized, BOS already added).
    """
    from datasets import Dataset

    from sae_lens_attn.models.embedded import load_embedded_tokenizer

    tokens = corpus_tokens(load_embedded_tokenizer(), context_size, n_sequences, split)
    return Dataset.from_dict({"input_ids": tokens.numpy()})
