"""Corpus token rows with the code region of every token (`models.code_regions`).

`corpus_region_rows` packs the same rows as `dataset.corpus_tokens` (files tokenized one at
a time, packed by SAELens's `concat_and_batch_sequences`: BOS first, files joined by the
separator) and packs, through the same function, one label per token: a bit per region
of `REGIONS` plus a "known" bit. BOS and separators are unknown, and so is every token of
a file that Python's `tokenize` rejects: the region test leaves them out.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.models.code_regions import REGIONS, char_regions, token_regions
from sae_lens_attn.models.corpus import SPLITS, iter_corpus_texts
from sae_lens_attn.models.dataset import FILES_PER_BATCH, _batched

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["KNOWN_BIT", "RegionRows", "corpus_region_rows", "decode_labels"]

KNOWN_BIT = 1 << len(REGIONS)


@dataclass(frozen=True)
class RegionRows:
    """`tokens [n, pos]`, `regions [n, pos, len(REGIONS)]` bool, `known [n, pos]` bool;
    `files` read and `failed_files` that `tokenize` rejected (their tokens unknown)."""

    tokens: torch.Tensor
    regions: torch.Tensor
    known: torch.Tensor
    files: int
    failed_files: int


def decode_labels(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed labels `[...]` -> `(regions [..., len(REGIONS)] bool, known [...] bool)`."""
    bits = torch.tensor([1 << i for i in range(len(REGIONS))])
    return (labels[..., None] & bits) > 0, (labels & KNOWN_BIT) > 0


def _file_labels(text: str, offsets: list[tuple[int, int]], counts: list[int]) -> torch.Tensor:
    spans = char_regions(text)
    if spans is None:
        counts[1] += 1
        return torch.zeros(len(offsets), dtype=torch.long)
    bits = torch.from_numpy(token_regions(offsets, spans, len(text))).long()
    return (bits << torch.arange(len(REGIONS))).sum(dim=1) | KNOWN_BIT


@functools.lru_cache(maxsize=4)
def corpus_region_rows(
    tokenizer: PreTrainedTokenizerBase,
    context_size: int,
    n_sequences: int,
    split: str = "test",
    root: Path | None = None,
) -> RegionRows:
    """The first `n_sequences` rows of `context_size` tokens of a corpus split, labelled.

    Labelling reads every file with Python's `tokenize` (1.7 s for the demo's 256 rows), so
    the last few results are kept: a later call with the same arguments returns the same
    `RegionRows`, whose tensors callers must not modify.
    """
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if context_size < 2 or n_sequences < 1:
        raise ValueError(
            f"need context_size >= 2 and n_sequences >= 1, got {context_size}, {n_sequences}"
        )
    counts = [0, 0]  # files, failed files
    ids: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []

    def files() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for texts in _batched(iter_corpus_texts(split, root), FILES_PER_BATCH):
            encoded = tokenizer(
                texts, add_special_tokens=False, verbose=False, return_offsets_mapping=True
            )
            for text, token_ids, offsets in zip(
                texts, encoded["input_ids"], encoded["offset_mapping"], strict=True
            ):
                counts[0] += 1
                yield torch.tensor(token_ids, dtype=torch.long), _file_labels(text, offsets, counts)

    pairs = files()
    first, second = itertools.tee(pairs)
    token_rows = concat_and_batch_sequences(
        tokens_iterator=(t for t, _ in first),
        context_size=context_size,
        begin_batch_token_id=tokenizer.bos_token_id,
        sequence_separator_token_id=tokenizer.eos_token_id,
    )
    label_rows = concat_and_batch_sequences(
        tokens_iterator=(lab for _, lab in second),
        context_size=context_size,
        begin_batch_token_id=0,
        sequence_separator_token_id=0,
    )
    for token_row, label_row in itertools.islice(
        zip(token_rows, label_rows, strict=True), n_sequences
    ):
        ids.append(token_row)
        labels.append(label_row)
    if len(ids) < n_sequences:
        raise ValueError(
            f"the {split!r} split has only {len(ids)} rows of {context_size} tokens; "
            f"asked for {n_sequences}"
        )
    regions, known = decode_labels(torch.stack(labels))
    return RegionRows(torch.stack(ids), regions, known, counts[0], counts[1])
