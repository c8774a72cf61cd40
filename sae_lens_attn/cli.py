"""The `sae-lens-attn` command line.

Each subcommand is a module in `sae_lens_attn.commands` with `add_parser(subparsers)` and
`run(args) -> int`; this file finds them, so adding a command means adding one module.
Command modules import heavy libraries (torch, sae_lens) inside `run`, keeping `--help`
fast.

Every failure ends as one `error: <what>: <why, what is valid>` line on stderr, exit code 2
for bad input (arguments, files, data: an `InvalidInputError`, or a `ValueError` raised by
sae_lens_attn's own checks) and 1 for anything else, with no traceback unless `--debug`
is given.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from sae_lens_attn import __version__, commands
from sae_lens_attn._upstream import silence_known_upstream_warnings
from sae_lens_attn.errors import InvalidInputError, PlainRuntimeError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` with every option's default: appended as "(default: X)" unless the help
    text already states it (defaults decided at run time, such as "default: all"); flags
    show "off", empty repeatable options "none"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.required or "default" in text.lower():
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is argparse.SUPPRESS:
            return text
        if action.default is None:
            return text  # no default to show: the help must say what happens (a test checks)
        if action.default in ([], ()):
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"

    def _split_lines(self, text: str, width: int) -> list[str]:
        # never break inside option names or words like "comma-separated"
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width,
                             break_on_hyphens=False, break_long_words=False)


DEBUG_HELP = "show the full traceback of an error"
PACKAGE_DIR = Path(__file__).resolve().parent


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line `error: ...` message (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="sae-lens-attn",
        description="Sparse autoencoders on attention outputs (hook_z) for SAELens.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"sae-lens-attn {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        command_parser = module.add_parser(subparsers)
        command_parser.set_defaults(run=module.run)
        for each in command_parsers(command_parser):  # nested ones too: `export neuronpedia`
            each.formatter_class = HelpFormatter  # one help style for every command
            each.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                              help=DEBUG_HELP)
    return parser


def command_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and the parsers of its own subcommands, at any depth."""
    nested = [
        sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for sub in action.choices.values()
    ]
    return [parser, *(found for sub in nested for found in command_parsers(sub))]


def apply_runtime_policy(args: argparse.Namespace) -> None:
    """Thread and huge-page settings of a compute command (`--threads`,
    `--no-huge-pages`), put in place before the command imports torch."""
    if not hasattr(args, "threads"):
        return
    from sae_lens_attn.runtime import apply_runtime_settings, configure_torch, resolve_settings

    settings = apply_runtime_settings(resolve_settings(args.threads, args.huge_pages))
    configure_torch(settings)


def main(argv: Sequence[str] | None = None) -> int:
    silence_known_upstream_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    apply_runtime_policy(args)
    warnings.formatwarning = one_line_warning
    try:
        return args.run(args)
    except (Exception, KeyboardInterrupt) as error:
        if args.debug:
            raise
        print(f"error: {describe_error(error)}", file=sys.stderr)
        return exit_code(error)


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as `warning: <message>` lines (not two lines with a source excerpt)."""
    return f"warning: {' '.join(str(message).split())}\n"


def describe_error(error: BaseException) -> str:
    """One line for `error`: our own errors carry their whole message, others get a hint
    (and their type, where it is not self-explanatory)."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    message = " ".join(str(error).split()) or "no message"
    if is_input_error(error) or isinstance(error, PlainRuntimeError):
        return message
    if not isinstance(error, (ValueError, OSError, RuntimeError)):
        message = f"{type(error).__name__}: {message}"
    return f"{message} (--debug shows the traceback)"


def exit_code(error: BaseException) -> int:
    """2 for bad input, 130 for Ctrl-C, 1 for everything else."""
    if isinstance(error, KeyboardInterrupt):
        return 130
    return 2 if is_input_error(error) else 1


def is_input_error(error: BaseException) -> bool:
    """An `InvalidInputError`, or a `ValueError` raised by a check in sae_lens_attn's own
    code (the innermost frame of its traceback is in this package), as opposed to one
    from deep inside torch or a library, which is a failure of ours to report."""
    if isinstance(error, InvalidInputError):
        return True
    if not isinstance(error, ValueError) or error.__traceback__ is None:
        return False
    frame = error.__traceback__
    while frame.tb_next is not None:
        frame = frame.tb_next
    return Path(frame.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


if __name__ == "__main__":
    sys.exit(main())
