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
from collections.abc import Sequence

from sae_lens_attn import __version__, commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-lens-attn",
        description="Sparse autoencoders on attention outputs (hook_z) for SAELens.",
    )
    parser.add_argument("--version", action="version", version=f"sae-lens-attn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        command_parser = module.add_parser(subparsers)
        command_parser.set_defaults(run=module.run)
    return parser


def apply_runtime_policy(args: argparse.Namespace) -> None:
    """Thread and huge-page settings of a compute command (`--threads`,
    `--no-huge-pages`), put in place before the command imports torch."""
    if not hasattr(args, "threads"):
        return
    from sae_lens_attn.runtime import apply_runtime_settings, configure_torch, resolve_settings

    settings = apply_runtime_settings(resolve_settings(args.threads, args.huge_pages))
    configure_torch(settings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    apply_runtime_policy(args)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
