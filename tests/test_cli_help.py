"""Every `--help` option of every command has help text and shows its default."""

import argparse
import re

import pytest

from sae_lens_attn.cli import HelpFormatter, build_parser, main


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its words, nested ones too (`export neuronpedia`)."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[f"{prefix} {name}".strip()] = sub
                    walk(sub, f"{prefix} {name}")

    walk(build_parser(), "")
    return found


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text)


COMMANDS = sorted(_subparsers())


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_and_shows_its_default(command, capsys):
    parser = _subparsers()[command]
    with pytest.raises(SystemExit) as exit_info:
        main([*command.split(), "--help"])
    assert exit_info.value.code == 0
    printed = _squash(capsys.readouterr().out)
    formatter = parser._get_formatter()
    for action in _options(parser):
        name = action.option_strings[-1]
        assert action.help and action.help.strip(), f"{command} {name} has no help text"
        shown = _squash(formatter._expand_help(action))
        assert shown in printed, f"{command} {name}: {shown!r} not in --help"
        if action.required:
            continue
        assert "default" in shown.lower(), f"{command} {name} does not say its default: {shown!r}"
        if action.default not in (None, [], ()) and not isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            assert str(action.default) in shown, f"{command} {name}: help disagrees with default {action.default!r}"


def test_help_formatter_shows_defaults_of_every_kind():
    parser = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="rows")
    parser.add_argument("--flag", action="store_true", help="switch")
    parser.add_argument("--extra", action="append", default=[], help="repeatable")
    parser.add_argument("--features", help="which (default: all)")
    text = _squash(parser.format_help())
    assert "rows (default: 512)" in text
    assert "switch (default: off)" in text
    assert "repeatable (default: none)" in text
    assert "which (default: all)" in text and "(default: None)" not in text
