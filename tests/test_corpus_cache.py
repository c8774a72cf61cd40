"""The tokenized-corpus disk cache: same rows as tokenizing afresh, keyed by what made them."""

from __future__ import annotations

import pytest
import torch
from sae_lens.tokenization_and_batching import concat_and_batch_sequences

from sae_lens_attn.models import load_embedded_tokenizer
from sae_lens_attn.models.corpus import corpus_files
from sae_lens_attn.models.dataset import corpus_tokens


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """A five-file corpus folder and an empty cache folder."""
    root = tmp_path / "stdlib"
    for n in range(5):
        (root / f"pkg{n % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"pkg{n % 2}" / f"m{n}.py").write_text(f"def f{n}(x):\n    return x * {n} + 'é'\n" * (n + 3))
    monkeypatch.setenv("SAE_LENS_ATTN_CACHE", str(tmp_path / "cache"))
    return root


def reference_rows(tokenizer, root, context: int) -> torch.Tensor:
    """Each file tokenized on its own, packed by SAELens: the rows before any cache."""
    files = [torch.tensor(tokenizer(p.read_text(), add_special_tokens=False)["input_ids"]) for p in
             corpus_files("train", root)]
    return torch.stack(list(concat_and_batch_sequences(
        tokens_iterator=iter(files), context_size=context,
        begin_batch_token_id=tokenizer.bos_token_id, sequence_separator_token_id=tokenizer.eos_token_id,
    )))


def cache_files(root):
    return sorted(p.name for p in (root.parent / "cache" / "corpus_tokens").glob("*.npy"))


def test_cached_rows_equal_fresh_rows_and_the_per_file_reference(corpus):
    tokenizer = load_embedded_tokenizer()
    expected = reference_rows(tokenizer, corpus, 16)
    first = corpus_tokens(tokenizer, 16, None, "train", root=corpus)
    assert [name.split(".", 1)[1] for name in cache_files(corpus)] == ["all.npy"]
    second = corpus_tokens(tokenizer, 16, 3, "train", root=corpus)  # read back, a prefix
    assert torch.equal(first, expected) and torch.equal(second, expected[:3])
    assert second.dtype == torch.long


def test_a_prefix_is_extended_when_more_rows_are_asked_for(corpus):
    tokenizer = load_embedded_tokenizer()
    assert corpus_tokens(tokenizer, 16, 2, "train", root=corpus).shape == (2, 16)
    assert [name.split(".", 1)[1] for name in cache_files(corpus)] == ["prefix.npy"]
    rows = corpus_tokens(tokenizer, 16, 4, "train", root=corpus)
    assert torch.equal(rows, reference_rows(tokenizer, corpus, 16)[:4])


def test_a_changed_file_or_row_length_makes_a_new_key(corpus):
    tokenizer = load_embedded_tokenizer()
    corpus_tokens(tokenizer, 16, None, "train", root=corpus)
    corpus_tokens(tokenizer, 12, None, "train", root=corpus)
    assert len(cache_files(corpus)) == 2
    (corpus / "pkg0" / "m0.py").write_text("x = 1\n" * 50)
    rows = corpus_tokens(tokenizer, 16, None, "train", root=corpus)
    assert len(cache_files(corpus)) == 3
    assert torch.equal(rows, reference_rows(tokenizer, corpus, 16))


def test_a_cached_split_still_refuses_more_rows_than_it_has(corpus):
    tokenizer = load_embedded_tokenizer()
    n_rows = corpus_tokens(tokenizer, 16, None, "train", root=corpus).shape[0]
    with pytest.raises(ValueError, match=f"has only {n_rows} rows"):
        corpus_tokens(tokenizer, 16, n_rows + 1, "train", root=corpus)


def test_the_cache_can_be_switched_off(corpus, monkeypatch):
    monkeypatch.setenv("SAE_LENS_ATTN_CACHE", "off")
    corpus_tokens(load_embedded_tokenizer(), 16, None, "train", root=corpus)
    assert not (corpus.parent / "cache").exists()
