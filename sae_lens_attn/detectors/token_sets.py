"""Token sets over a model's vocabulary, for token-set enrichment.

Sets are built from each token id decoded on its own (`tokenizer.decode([id])`), so they
work for any tokenizer (GPT-2's `Ġ` and SentencePiece's `▁` both decode to a space):

- `starts_with_space`: the decoded token starts with " ".
- `capitalised`: its first non-space character is an upper-case letter.
- `all_caps`: at least two letters, all upper case (after stripping spaces).
- `digits`: only digits (after stripping spaces).
- `punctuation`: only ASCII punctuation (after stripping spaces).
- regex sets given by the user: `re.match(pattern, decoded_token)` (the tutorial's
  `get_gene_set_from_regex` matches raw vocabulary strings instead).
- NLTK part-of-speech sets `nltk_pos_<TAG>` (the tutorial's `generate_pos_sets`: each
  stripped token tagged on its own), only when NLTK's tagger data is installed; nothing
  is ever downloaded.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "BUILTIN_TOKEN_SETS",
    "builtin_token_sets",
    "nltk_pos_token_sets",
    "nltk_tagger_status",
    "regex_token_sets",
    "token_sets_for_model",
    "token_strings",
]

_PUNCTUATION = set(string.punctuation)


def _stripped(text: str) -> str:
    return text.strip()


BUILTIN_TOKEN_SETS: dict[str, Callable[[str], bool]] = {
    "starts_with_space": lambda s: s.startswith(" "),
    "capitalised": lambda s: _stripped(s)[:1].isupper(),
    "all_caps": lambda s: sum(c.isalpha() for c in s) >= 2
    and _stripped(s).isalpha()
    and _stripped(s).isupper(),
    "digits": lambda s: _stripped(s).isdigit(),
    "punctuation": lambda s: bool(_stripped(s)) and set(_stripped(s)) <= _PUNCTUATION,
}


def token_strings(tokenizer: Any, d_vocab: int) -> list[str]:
    """Each id in `0..d_vocab-1` decoded on its own; ids the tokenizer lacks give ""."""
    n_known = min(d_vocab, len(tokenizer))
    decoded = tokenizer.batch_decode([[i] for i in range(n_known)], clean_up_tokenization_spaces=False)
    return list(decoded) + [""] * (d_vocab - n_known)


def builtin_token_sets(strings: Sequence[str]) -> dict[str, list[int]]:
    """The built-in sets (see module docstring) as sorted id lists; empty sets dropped."""
    sets = {
        name: [i for i, text in enumerate(strings) if member(text)]
        for name, member in BUILTIN_TOKEN_SETS.items()
    }
    return {name: ids for name, ids in sets.items() if ids}


def regex_token_sets(strings: Sequence[str], patterns: Mapping[str, str]) -> dict[str, list[int]]:
    """`{name: ids whose decoded token re.match-es pattern}` for each `name: pattern`."""
    sets = {}
    for name, pattern in patterns.items():
        try:
            compiled = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"token set {name!r}: bad regular expression {pattern!r}: {err}") from None
        sets[name] = [i for i, text in enumerate(strings) if compiled.match(text)]
    return sets


def nltk_tagger_status() -> tuple[bool, str]:
    """Whether NLTK's English perceptron tagger data is installed, and a message saying so."""
    try:
        import nltk
        from nltk.tag import PRETRAINED_TAGGERS
    except ImportError:
        return False, "NLTK is not installed: part-of-speech token sets skipped"
    resource = PRETRAINED_TAGGERS.get("eng", "taggers/averaged_perceptron_tagger_eng/")
    try:
        nltk.data.find(resource)
    except LookupError:
        return False, (
            f"NLTK tagger data {resource!r} is not installed (nothing is downloaded here): "
            "part-of-speech token sets skipped. Install it with "
            "`python -m nltk.downloader averaged_perceptron_tagger_eng` where a network is "
            "available."
        )
    return True, f"NLTK tagger data {resource!r} found: part-of-speech token sets included"


def nltk_pos_token_sets(strings: Sequence[str]) -> dict[str, list[int]]:
    """`nltk_pos_<TAG>` sets, each stripped non-empty token tagged on its own.

    Raises ValueError (with `nltk_tagger_status`'s message) when the tagger data is missing.
    """
    available, message = nltk_tagger_status()
    if not available:
        raise ValueError(message)
    import nltk

    ids = [i for i, text in enumerate(strings) if _stripped(text)]
    tagged = nltk.pos_tag_sents([[_stripped(strings[i])] for i in ids])
    sets: dict[str, list[int]] = {}
    for i, sentence in zip(ids, tagged, strict=True):
        sets.setdefault(f"nltk_pos_{sentence[0][1]}", []).append(i)
    return dict(sorted(sets.items()))


def token_sets_for_model(
    model: Any,
    regex: Mapping[str, str] | None = None,
    builtin: bool = True,
    pos: bool = True,
) -> tuple[dict[str, list[int]], list[str]]:
    """Token sets over `model`'s vocabulary (`model.W_U.shape[1]` ids) and notes to show.

    The notes say which optional sets were left out and why (no NLTK tagger data).
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "token sets need the model's tokenizer to decode tokens, but model.tokenizer is "
            "None: attach one, or pass token sets as {name: [token ids]}"
        )
    strings = token_strings(tokenizer, model.W_U.shape[1])
    sets: dict[str, list[int]] = builtin_token_sets(strings) if builtin else {}
    sets.update(regex_token_sets(strings, regex or {}))
    notes = []
    if pos:
        available, message = nltk_tagger_status()
        notes.append(message)
        if available:
            sets.update(nltk_pos_token_sets(strings))
    return sets, notes
