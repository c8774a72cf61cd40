"""argparse value types shared by the subcommands: each turns one option's text into a value
or raises `argparse.ArgumentTypeError` saying what is valid."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def parse_index_list(text: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11] (inclusive ranges, order kept)."""
    indices: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        start, _, end = part.partition("-")
        try:
            first, last = int(start), int(end or start)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad index list {text!r}: expected numbers and ranges like '0-49,60'"
            ) from None
        if first < 0 or last < first:
            raise argparse.ArgumentTypeError(
                f"bad range {part!r} in {text!r}: expected 'a-b' with 0 <= a <= b"
            )
        indices.extend(range(first, last + 1))
    if not indices:
        raise argparse.ArgumentTypeError(f"empty index list {text!r}")
    return indices


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _bounded_int(text, minimum=1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _bounded_int(text, minimum=0)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type factory: an integer >= `minimum`."""

    def parse(text: str) -> int:
        return _bounded_int(text, minimum=minimum)

    parse.__name__ = f"int>={minimum}"
    return parse


def finite_float(text: str) -> float:
    """argparse type: a finite number (no nan/inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not finite: expected a finite number")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative: expected a number >= 0")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not positive: expected a number > 0")
    return value


def comma_list(item_type: Callable[[str], object]) -> Callable[[str], list]:
    """argparse type factory: 'a,b,c' -> [item_type(a), item_type(b), item_type(c)]."""

    def parse(text: str) -> list:
        items = [part.strip() for part in text.split(",")]
        if not all(items):
            raise argparse.ArgumentTypeError(f"bad list {text!r}: expected items separated by commas")
        return [item_type(item) for item in items]

    parse.__name__ = f"list of {getattr(item_type, '__name__', 'values')}"
    return parse


def _bounded_int(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{value} is too small: expected an integer >= {minimum}")
    return value
