"""The `sae-lens-attn` command line.

Each subcommand is a module in `sae_lens_attn.commands` with `add_parser(subparsers)` and
`run(args) -> int`; this file finds them, so adding a command means adding one module.
Command modules import heavy libraries (torch, sae_lens) inside `run`, keeping `--help`
fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import textwrap
from collections.abc import Sequence

from sae_lens_attn import __version__, commands
from sae_lens_attn._upstream import silence_known_upstream_warnings


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` with every option's default: appended as "(default: X)" unless the help
    text already states it (defaults decided at run time, such as "default: all"); flags
    show "off", empty repeatable options "none"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.required or action.default is argparse.SUPPRESS or "default" in text.lower():
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None:
            return text  # no default to show: the help must say what happens (a test checks)
        if action.default in ([], ()):
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"

    def _split_lines(self, text: str, width: int) -> list[str]:
        # never break inside option names or words like "comma-separated"
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width,
                             break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-lens-attn",
        description="Sparse autoencoders on attention outputs (hook_z) for SAELens.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sae-lens-attn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        command_parser = module.add_parser(subparsers)
        command_parser.formatter_class = HelpFormatter  # one help style for every command
        command_parser.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    silence_known_upstream_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
