"""MkDocs hook: replace `<!-- cli-help COMMAND [SUBCOMMAND] -->` in a page with that
command's `--help`.

The command-line reference is then printed by the parser itself at build time, so it
cannot drift from the code. `<!-- cli-help -->` (no command) gives the top-level help.
"""

from __future__ import annotations

import argparse
import os
import re

_MARKER = re.compile(r"<!-- cli-help ?([a-z_ -]*?) -->")


def _help_text(command: str) -> str:
    from sae_lens_attn.cli import build_parser

    os.environ["COLUMNS"] = "80"  # argparse wraps to the terminal width: fit the page column
    parser = build_parser()
    for word in command.split():  # "export neuronpedia": a command's own subcommand
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        if word not in subparsers.choices:
            raise ValueError(f"cli-help marker names unknown command {command!r}; known: "
                             f"{sorted(subparsers.choices)}")
        parser = subparsers.choices[word]
    return parser.format_help()


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    return _MARKER.sub(lambda match: f"```text\n{_help_text(match.group(1))}```", markdown)
