"""Token datasets as SAELens's `ActivationsStore` reads them."""

from __future__ import annotations

import torch
from datasets import Dataset
from sae_lens.config import HfDataset


def as_token_dataset(dataset: HfDataset | torch.Tensor) -> HfDataset:
    """A pretokenized dataset (`input_ids`/`tokens` rows) as it is; a `[n_seq, pos]`
    token tensor becomes a `Dataset` with an `input_ids` column."""
    if isinstance(dataset, torch.Tensor):
        if dataset.ndim != 2:
            raise ValueError(f"token tensor must be [n_seq, pos], got {list(dataset.shape)}")
        return Dataset.from_dict({"input_ids": dataset.tolist()})
    return dataset


def row_length(dataset: HfDataset) -> int:
    """Tokens per row of a pretokenized dataset."""
    row = next(iter(dataset))
    for column in ("input_ids", "tokens"):
        if column in row:
            return len(row[column])
    raise ValueError(
        f"dataset must be pretokenized (an input_ids or tokens column), got columns {list(row)}"
    )
