"""Text from tokens and data made safe for where it lands, and written atomically.

- Plotly renders a subset of HTML in every label (titles, tick labels, trace names, text
  and hover text): `<a href>` becomes a live link, `<b>` and `<br>` render. `plotly_text`
  escapes `&`, `<` and `>` (plotly shows the entities as the characters) and is used for
  every token- or data-derived string put into a figure.
- A CSV cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is a formula
  to spreadsheet programs (`=HYPERLINK(...)`); `csv_cell` prefixes such text with `'`
  (OWASP's advice) and replaces control characters (NUL, ...) except tab and newline with
  U+FFFD. Numbers are left as they are.
- Markdown renders inline HTML: `markdown_text` escapes `&`, `<`, `>` as entities and `|`
  (a table cell's end), and puts line breaks on one line.
- A terminal runs escape sequences: `terminal_text` puts text from plugins on one line
  without control characters.
- `write_csv` and `write_figure_html` write through `_atomic`: a failure leaves no file.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sae_lens_attn._atomic import atomic_path, atomic_write_text

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_PLOTLY_MARKUP = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def plotly_text(text: Any) -> str:
    """`str(text)` with `&`, `<`, `>` escaped, so plotly shows it literally."""
    return str(text).translate(_PLOTLY_MARKUP)


def plotly_texts(texts: Iterable[Any]) -> list[str]:
    """`plotly_text` of each item."""
    return [plotly_text(text) for text in texts]


def markdown_text(text: Any) -> str:
    """`str(text)` safe inside a Markdown table cell or heading: no HTML, no `|`, one line."""
    return " ".join(plotly_text(text).replace("|", "\\|").splitlines())


def terminal_text(text: Any) -> str:
    """`str(text)` on one line, control characters (ESC, NUL, ...) replaced by `?` (ASCII,
    so any terminal encoding can print it)."""
    return _CONTROL.sub("?", " ".join(str(text).splitlines()))


def csv_cell(value: Any) -> Any:
    """A CSV cell value a spreadsheet shows as text: non-strings are returned unchanged."""
    if not isinstance(value, str):
        return value
    value = _CONTROL.sub("\ufffd", value)
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def read_csv_cell(text: str) -> str:
    """The text `csv_cell` was given (up to replaced control characters)."""
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_STARTS) else text


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]],
              fieldnames: Sequence[str] | None = None) -> Path:
    """Write `rows` (header from `fieldnames` or the first row) with every cell passed
    through `csv_cell`, atomically. No rows and no fieldnames: an empty file."""
    buffer = io.StringIO(newline="")
    names = list(fieldnames if fieldnames is not None else (rows[0] if rows else []))
    if names:
        writer = csv.DictWriter(buffer, fieldnames=names)
        writer.writerow({name: csv_cell(name) for name in names})
        writer.writerows({key: csv_cell(value) for key, value in row.items()} for row in rows)
    atomic_write_text(path, buffer.getvalue())
    return Path(path)


def write_figure_html(figure: Any, path: str | Path, include_plotlyjs: bool | str = True) -> Path:
    """`figure` (a `go.Figure` or a figure dict) as a plotly HTML page under a temporary
    name, renamed when complete."""
    import plotly.io as pio

    with atomic_path(path) as temporary:
        pio.write_html(figure, temporary, include_plotlyjs=include_plotlyjs)
    return Path(path)
