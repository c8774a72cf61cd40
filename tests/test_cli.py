import argparse
import subprocess
import sys

import pytest

from sae_lens_attn import __version__
from sae_lens_attn.cli import build_parser, main
from sae_lens_attn.commands._values import (
    parse_index_list,
)


def test_version_prints_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sae-lens-attn {__version__}"


def test_every_subcommand_has_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "plugins" in subparsers.choices
    for name, subparser in subparsers.choices.items():
        help_text = subparser.format_help()
        assert help_text.startswith("usage: sae-lens-attn " + name), name


def test_console_script_runs_plugins():
    result = subprocess.run(
        [sys.executable, "-m", "sae_lens_attn.cli", "plugins"],
        capture_output=True, text=True, check=True,
    )
    assert result.stdout.splitlines()[0].split() == ["kind", "name", "plugin", "description"]


def test_parse_index_list_expands_ranges():
    assert parse_index_list("0-3,7, 10-11") == [0, 1, 2, 3, 7, 10, 11]
    for bad in ["", "a-b", "5-2", "-3"]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_index_list(bad)
