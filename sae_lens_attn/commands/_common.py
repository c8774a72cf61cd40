"""Arguments and loaders shared by several subcommands (model, SAE path, output folder)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

EMBEDDED_MODEL = "embedded"


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=EMBEDDED_MODEL,
        help=f"'{EMBEDDED_MODEL}' (the small model shipped with the package, default) or a "
        "TransformerLens model name such as gpt2-small or gelu-2l (needs the model hub)",
    )


def add_sae_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sae", required=True, type=Path, help="folder of an SAE saved by SAELens (save_model)"
    )


def add_out_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path(default), help=f"output folder (default: {default})"
    )


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """`--threads` and `--no-huge-pages`: the CPU runtime policy (`sae_lens_attn.runtime`),
    applied by the CLI before the command imports torch."""
    from sae_lens_attn.runtime import DEFAULT_MAX_THREADS, default_threads

    group = parser.add_argument_group("CPU runtime")
    group.add_argument(
        "--threads", type=positive_int, default=None,
        help="torch CPU threads (default: $OMP_NUM_THREADS if set, else the CPU count capped "
        f"at {DEFAULT_MAX_THREADS}: {default_threads()} here); idle threads sleep rather than "
        "spin, so a busy machine does not slow every step (docs/runtime.md)",
    )
    group.add_argument(
        "--no-huge-pages", dest="huge_pages", action="store_false",
        help="do not ask Linux for transparent huge pages for torch's CPU tensors (default: "
        "ask, THP_MEM_ALLOC_ENABLE=1; fewer page faults on large activation batches)",
    )


def load_model(name: str) -> HookedTransformer:
    """The embedded model or a TransformerLens hub model, by name."""
    from sae_lens_attn.models import load_model as load_named_model

    return load_named_model(name)


def load_sae(path: Path, device: str = "cpu") -> SAE:
    """An SAE saved with SAELens's `save_model`; a clear error when the folder is wrong."""
    from sae_lens import SAE

    path = Path(path)
    if not (path / "cfg.json").is_file():
        raise SystemExit(
            f"error: {path} is not a saved SAE folder (expected {path / 'cfg.json'} and "
            "sae_weights.safetensors, as written by SAE.save_model)"
        )
    return SAE.load_from_disk(path, device=device)


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
