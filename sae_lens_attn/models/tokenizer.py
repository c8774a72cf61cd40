"""A byte-level BPE tokenizer trained locally with `tokenizers`, saved as a HF folder.

Byte-level (as GPT-2) so any text encodes. One special token, `<|endoftext|>`, serves as
BOS, EOS and padding. The tokenizer is saved with `PreTrainedTokenizerFast.save_pretrained`
and loaded back from that folder: TransformerLens fails on a tokenizer built in memory
(`KeyError: 'name_or_path'`), while one loaded from a folder works, and sae_dashboard
needs its `.vocab`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKEN = "<|endoftext|>"


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE on `texts`; the special token gets id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be at least 300 (256 bytes + merges), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, folder: Path, model_max_length: int) -> Path:
    """Save as a `transformers` tokenizer folder (tokenizer.json + configs)."""
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        model_max_length=model_max_length,
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(folder)
    return folder


def load_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer folder written by `save_tokenizer` (no network)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise ValueError(f"{folder} is not a tokenizer folder (missing tokenizer.json)")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
