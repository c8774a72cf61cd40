"""Token ids -> display text: the one function every page, table, CSV and report uses.

Byte-level BPE vocabularies (GPT-2's, the embedded model's) hold tokens that are only part
of a UTF-8 character, e.g. the first byte of "—". `tokenizer.decode([id])` turns those into
U+FFFD ("�"), so ten different tokens all read "�". Here a token whose decoding holds U+FFFD
is rebuilt from its bytes (byte-level alphabet or SentencePiece `<0xE2>` byte pieces) and
decoded with every byte that is not valid UTF-8 on its own written as an escape (`\\xe2`).
Whitespace is made visible (newline `↵`, tab `⇥`, other control and invisible
characters as `\\x..`/`\\u....` escapes); a space stays a space (pages show it with
`white-space: pre`). The result is plain text: escape it for where it lands (HTML, plotly
labels, CSV, Markdown). No U+FFFD is ever returned.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

REPLACEMENT_CHARACTER = "\ufffd"
VISIBLE_WHITESPACE = {"\n": "↵", "\t": "⇥"}
_SENTENCEPIECE_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@functools.cache
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, printable character -> byte (`bytes_to_unicode`)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, characters, strict=True)}


def visible_text(text: str) -> str:
    """`text` with whitespace made visible and no invisible or replacement characters:
    newline `↵`, tab `⇥`, other control/format characters and U+FFFD as Python-style
    escapes; ordinary spaces kept."""
    parts = []
    for char in text:
        if char in VISIBLE_WHITESPACE:
            parts.append(VISIBLE_WHITESPACE[char])
        elif char == " " or (char.isprintable() and char != REPLACEMENT_CHARACTER):
            parts.append(char)
        else:
            parts.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(parts)


def token_bytes(tokenizer: Any, token_id: int) -> bytes | None:
    """The bytes a token stands for, when its vocabulary piece spells them (byte-level BPE
    or a SentencePiece byte piece); None otherwise."""
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(piece, str) or not piece:
        return None
    byte_piece = _SENTENCEPIECE_BYTE.fullmatch(piece)
    if byte_piece:
        return bytes([int(byte_piece.group(1), 16)])
    alphabet = _byte_level_decoder()
    if all(char in alphabet for char in piece):
        return bytes(alphabet[char] for char in piece)
    return None


def display_token(tokenizer: Any, token_id: int) -> str:
    """One token as readable text (see the module doc); `#id` without a tokenizer."""
    if tokenizer is None:
        return f"#{int(token_id)}"
    text = tokenizer.decode([int(token_id)], clean_up_tokenization_spaces=False)
    if REPLACEMENT_CHARACTER in text:
        raw = token_bytes(tokenizer, token_id)
        if raw is not None:
            text = raw.decode("utf-8", errors="backslashreplace")
    return visible_text(text)


def token_display_fn(tokenizer: Any) -> Callable[[int], str]:
    """`display_token` bound to `tokenizer`, cached per id."""

    @functools.cache
    def display(token_id: int) -> str:
        return display_token(tokenizer, token_id)

    return display


def display_vocabulary(tokenizer: Any, d_vocab: int) -> list[str]:
    """`display_token` of every id `0..d_vocab-1`; ids the tokenizer lacks give `#id`."""
    n_known = min(d_vocab, len(tokenizer))
    decoded = tokenizer.batch_decode([[i] for i in range(n_known)], clean_up_tokenization_spaces=False)
    shown = [
        display_token(tokenizer, i) if REPLACEMENT_CHARACTER in text else visible_text(text)
        for i, text in enumerate(decoded)
    ]
    return shown + [f"#{i}" for i in range(n_known, d_vocab)]


def quoted(display: str) -> str:
    """A display string in single quotes for prose (`'\\xe2'`, not `repr`'s `'\\\\xe2'`)."""
    return f"'{display}'"
