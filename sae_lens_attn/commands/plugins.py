"""`sae-lens-attn plugins`: list every loaded plugin entry by kind, and broken plugins."""

from __future__ import annotations

import argparse
import sys
import warnings


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        "plugins",
        help="list architectures, activation sources, detectors and panels from plugins",
        description="List what every installed sae_lens_attn plugin provides, by kind. "
        "Plugins that failed to load, entries that are not valid and name clashes (a "
        "built-in always wins) are printed as `error:` lines on stderr, and the exit code "
        "is then 1.",
    )


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from sae_lens_attn._safe_output import terminal_text
    from sae_lens_attn.plugins import KIND_TO_HOOK, get_plugin_manager

    with warnings.catch_warnings():  # each problem is printed below, once
        warnings.simplefilter("ignore")
        manager = get_plugin_manager()
        rows = [
            tuple(terminal_text(cell) for cell in
                  (kind, loaded.entry.name, loaded.plugin, loaded.entry.description))
            for kind in KIND_TO_HOOK
            for loaded in manager.entries(kind)
        ]
    print(format_table(rows, ("kind", "name", "plugin", "description")))
    for error in manager.load_errors:
        print(terminal_text(f"error: plugin {error.plugin!r}: {error.error}"), file=sys.stderr)
    return 1 if manager.load_errors else 0
