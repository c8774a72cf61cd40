"""Where the high-level regions of Python source are: docstrings, comments, string
literals, decorators, class bodies, from Python's own `tokenize`.

`char_regions(source)` -> `{region: [(start, end), ...]}` half-open character spans, or
None when `tokenize` rejects the text (an unterminated string, inconsistent dedent...);
`token_regions(offsets, spans)` -> `[n_tokens, len(REGIONS)]` bool: a token is in a region
when its character span `(start, end)` (a fast tokenizer's offset mapping) overlaps one
of the region's spans.

The regions (a token may be in several, e.g. a comment inside a class body):

    docstring   the string that is the first statement of the module, a class or a def
    comment     `# ...` to the end of the line
    string      every other string literal (f-strings whole)
    decorator   from `@` to the end of its logical line
    class_body  a class's indented block, at any depth (its methods too), from the
                start of its first line to the end of its last statement
"""

from __future__ import annotations

import io
import tokenize
from collections.abc import Sequence

import numpy as np

__all__ = ["REGIONS", "char_regions", "token_regions"]

REGIONS = ("docstring", "comment", "string", "decorator", "class_body")

_SKIPPED = {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING}
_FSTRING_START = getattr(tokenize, "FSTRING_START", None)  # Python >= 3.12 splits f-strings
_FSTRING_END = getattr(tokenize, "FSTRING_END", None)


def _line_starts(source: str) -> list[int]:
    """Character offset of each line's start, split as `tokenize` reads them."""
    starts, offset = [0], 0
    for line in io.StringIO(source):
        offset += len(line)
        starts.append(offset)
    return starts


def _logical_lines(
    tokens: list[tokenize.TokenInfo],
) -> list[tuple[list[tokenize.TokenInfo], list[int]]]:
    """`(significant tokens of the line, INDENT/DEDENT events before it)` per logical
    line: events are +1 (INDENT) and -1 (DEDENT), in order."""
    lines: list[tuple[list[tokenize.TokenInfo], list[int]]] = []
    current: list[tokenize.TokenInfo] = []
    events: list[int] = []
    for token in tokens:
        if token.type == tokenize.INDENT:
            events.append(1)
        elif token.type == tokenize.DEDENT:
            events.append(-1)
        if token.type in _SKIPPED:
            continue
        if token.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            if current or events:
                lines.append((current, events))
            current, events = [], []
            continue
        current.append(token)
    return lines


def char_regions(source: str) -> dict[str, list[tuple[int, int]]] | None:
    """Half-open character spans of every region in `source`, or None when Python's
    `tokenize` cannot read it."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return None
    starts = _line_starts(source)

    def offset(position: tuple[int, int]) -> int:
        return starts[position[0] - 1] + position[1]

    spans: dict[str, list[tuple[int, int]]] = {region: [] for region in REGIONS}
    spans["comment"] = [
        (offset(t.start), offset(t.end)) for t in tokens if t.type == tokenize.COMMENT
    ]
    docstrings: set[int] = set()
    blocks: list[tuple[str, int]] = []  # (header kind, body start) of each open indented block
    header, expect_docstring, last_end = "", True, 0
    for line, events in _logical_lines(tokens):
        for event in events:
            if event > 0:
                blocks.append((header, starts[line[0].start[0] - 1] if line else last_end))
                expect_docstring = header in ("class", "def")
            elif blocks:
                kind, start = blocks.pop()
                if kind == "class":
                    spans["class_body"].append((start, last_end))
        if not line:
            continue
        if expect_docstring and all(t.type == tokenize.STRING for t in line):
            docstrings.update(offset(t.start) for t in line)
            spans["docstring"].append((offset(line[0].start), offset(line[-1].end)))
        if line[0].type == tokenize.OP and line[0].string == "@":
            spans["decorator"].append((offset(line[0].start), offset(line[-1].end)))
        words = [t.string for t in line[:2]]
        ends_block = line[-1].type == tokenize.OP and line[-1].string == ":"
        header = (
            ("class" if words[0] == "class" else "def" if "def" in words else "other")
            if ends_block
            else ""
        )
        expect_docstring = False
        last_end = offset(line[-1].end)
    for kind, start in reversed(blocks):  # blocks still open at the end of the file
        if kind == "class":
            spans["class_body"].append((start, last_end))
    spans["string"] = _strings(tokens, offset, docstrings)
    return spans


def _strings(
    tokens: list[tokenize.TokenInfo], offset, docstrings: set[int]
) -> list[tuple[int, int]]:
    """String literals other than docstrings (an f-string of Python >= 3.12 as one span)."""
    found, opened = [], []
    for token in tokens:
        if token.type == tokenize.STRING and offset(token.start) not in docstrings:
            found.append((offset(token.start), offset(token.end)))
        elif _FSTRING_START is not None and token.type == _FSTRING_START:
            opened.append(offset(token.start))
        elif _FSTRING_END is not None and token.type == _FSTRING_END and opened:
            start = opened.pop()
            if not opened:  # nested f-strings are inside the outer span
                found.append((start, offset(token.end)))
    return found


def token_regions(
    offsets: Sequence[tuple[int, int]], spans: dict[str, list[tuple[int, int]]], n_chars: int
) -> np.ndarray:
    """`[n_tokens, len(REGIONS)]` bool: token `(start, end)` overlaps a span of the region
    (`n_chars`: length of the text the offsets index)."""
    bounds = np.asarray(offsets, dtype=np.int64).reshape(-1, 2).clip(0, n_chars)
    out = np.zeros((len(bounds), len(REGIONS)), dtype=bool)
    for column, region in enumerate(REGIONS):
        covered = np.zeros(n_chars + 1, dtype=np.int64)
        for start, end in spans.get(region, ()):
            covered[start] += 1
            covered[end] -= 1
        inside = np.concatenate(
            [[0], (np.cumsum(covered)[:n_chars] > 0).cumsum()]
        )  # chars in region before i
        out[:, column] = inside[bounds[:, 1]] > inside[bounds[:, 0]]
    return out
