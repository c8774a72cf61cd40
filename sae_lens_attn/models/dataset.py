"""Token sequences of the embedded corpus, for training and evaluating on it.

Files are tokenized one at a time with the embedded tokenizer and packed into rows with
SAELens's own `concat_and_batch_sequences`: each row starts with BOS and files are joined by
the `<|endoftext|>` separator, as SAELens packs text datasets itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sae_lens_attn.models.corpus import SPLITS, iter_corpus_texts

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
        torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
        for text in iter_corpus_texts(split, root)
    )
    return concat_and_batch_sequences(
        tokens_iterator=files,
        context_size=context_size,
        begin_batch_token_id=tokenizer.bos_token_id,
        sequence_separator_token_id=tokenizer.eos_token_id,
    )


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
    rows = list(itertools.islice(iter_token_rows(tokenizer, context_size, split, root), n_sequences))
    if n_sequences is not None and len(rows) < n_sequences:
        raise ValueError(
            f"the {split!r} split has only {len(rows)} rows of {context_size} tokens; "
            f"asked for {n_sequences}"
        )
    return torch.stack(rows)


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
    return Dataset.from_dict({"input_ids": tokens.tolist()})
