"""Token display: readable text for every token, no U+FFFD, bytes as escapes."""

from __future__ import annotations

from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

from sae_lens_attn.models import load_embedded_tokenizer
from sae_lens_attn.models.token_display import (
    _byte_level_decoder,
    display_token,
    display_vocabulary,
    quoted,
    token_bytes,
    visible_text,
)


def test_byte_level_alphabet_is_gpt2s():
    assert _byte_level_decoder() == {char: byte for byte, char in bytes_to_unicode().items()}


def test_no_token_of_the_embedded_vocabulary_shows_a_replacement_character():
    tokenizer = load_embedded_tokenizer()
    shown = display_vocabulary(tokenizer, len(tokenizer) + 2)
    assert not any("\ufffd" in text for text in shown)
    assert shown[-2:] == [f"#{len(tokenizer)}", f"#{len(tokenizer) + 1}"]  # ids beyond the vocabulary
    broken = [i for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i])]
    assert broken  # byte-level BPE has partial characters: the case this module exists for
    assert shown == [display_token(tokenizer, i) for i in range(len(tokenizer))] + shown[-2:]


def test_partial_characters_show_their_bytes_and_the_bytes_spell_the_text():
    tokenizer = load_embedded_tokenizer()
    text = "x = '—ü☃'\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert b"".join(token_bytes(tokenizer, i) for i in ids) == text.encode("utf-8")
    shown = [display_token(tokenizer, i) for i in ids]
    assert any("\\xe2" in s for s in shown)  # the first byte of "—" or "☃", alone in a token
    assert "".join(shown).endswith("'↵")


def test_whitespace_and_invisible_characters_are_made_visible():
    assert visible_text(" a\tb\nc") == " a⇥b↵c"
    assert visible_text("\x00\r\u200b\ufffd") == "\\x00\\r\\u200b\\ufffd"
    assert visible_text("é—") == "é—"


class SentencePieceLike:
    """A tokenizer whose id 5 is the byte piece `<0xE2>` (decodes to U+FFFD)."""

    def decode(self, ids, clean_up_tokenization_spaces=False):
        return "\ufffd" if ids == [5] else "▁word"

    def convert_ids_to_tokens(self, token_id):
        return "<0xE2>" if token_id == 5 else "▁word"


def test_sentencepiece_byte_pieces_show_their_byte():
    assert display_token(SentencePieceLike(), 5) == "\\xe2"
    assert display_token(None, 5) == "#5"
    assert quoted("\\xe2") == "'\\xe2'"
