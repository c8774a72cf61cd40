"""Arguments and loaders shared by several subcommands (model, SAE path, output folder)."""

from __future__ import annotations

import argparse
import math
import os
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
    """`--sae FOLDER` and `--sae-name NAME`. FOLDER is a saved SAE (SAELens's `save_model`,
    or one SAE of a `train` run, `OUT/NAME`) or a `train` output folder; there `--sae-name`
    picks one SAE of its `saes.json` (not needed when it lists one). `args.sae` is the
    SAE's folder once both are parsed, in either order."""
    parser.add_argument(
        "--sae", required=True, action=_SAEFolderAction,
        help="an SAE folder (saved by SAELens, or OUT/NAME of a train run) or a train output "
        "folder with saes.json (pick one of its SAEs with --sae-name)",
    )
    parser.add_argument(
        "--sae-name", default=None, action=_SAEFolderAction,
        help="name of the SAE in --sae's saes.json (as `sae-lens-attn train` lists them); "
        "not needed when it lists one SAE (default: none)",
    )


class _SAEFolderAction(argparse.Action):
    """Stores `--sae` / `--sae-name`; once both are known, `--sae` becomes the named SAE's
    folder (`resolve_sae_folder`), so commands call `load_sae(args.sae)` as before."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        setattr(namespace, self.dest, Path(value) if self.dest == "sae" else value)
        folder, name = getattr(namespace, "sae", None), getattr(namespace, "sae_name", None)
        if folder is None or name is None:
            return
        try:
            namespace.sae = resolve_sae_folder(folder, name)
        except ValueError as error:
            raise argparse.ArgumentError(self, str(error)) from None


def add_out_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path(default), help=f"output folder (default: {default})"
    )


def load_model(name: str) -> HookedTransformer:
    """The embedded model or a TransformerLens hub model, by name."""
    from sae_lens_attn.models import load_model as load_named_model

    return load_named_model(name)


def resolve_sae_folder(path: Path, name: str | None = None) -> Path:
    """The SAE folder that `--sae path [--sae-name name]` means; a ValueError naming the
    choices when it is ambiguous or unknown.

    A folder without `saes.json` is taken as it is. In a `train` output folder (with
    `saes.json`), `name` picks an entry; without `name` the folder itself if it is the
    SAE (a one-SAE run), else its only entry.
    """
    from sae_lens_attn.sources.outputs import SAE_CONFIG_FILENAME, SAE_LIST_FILENAME, read_sae_list

    path = Path(path)
    listing = path / SAE_LIST_FILENAME
    if not listing.is_file():
        if name is not None:
            raise ValueError(
                f"{path} has no {SAE_LIST_FILENAME}, so --sae-name {name!r} names nothing; pass "
                "the output folder of `sae-lens-attn train`, or the SAE's own folder without --sae-name"
            )
        return path
    entries = read_sae_list(path)
    names = ", ".join(entry["name"] for entry in entries)
    if name is None:
        if (path / SAE_CONFIG_FILENAME).is_file():
            return path
        if len(entries) != 1:
            raise ValueError(f"{path} holds {len(entries)} SAEs ({SAE_LIST_FILENAME}); choose one "
                             f"with --sae-name: {names}")
        [entry] = entries
    else:
        matches = [entry for entry in entries if entry["name"] == name]
        if not matches:
            raise ValueError(f"no SAE named {name!r} in {listing}; its SAEs are: {names}")
        entry = matches[0]
    folder = path / entry["path"]
    if not folder.resolve().is_relative_to(path.resolve()):
        raise ValueError(f"{listing}: path {entry['path']!r} of {entry['name']!r} leaves {path}")
    return folder


def load_sae(path: Path, device: str = "cpu") -> SAE:
    """An SAE saved with SAELens's `save_model` (or chosen from a `train` output folder,
    `resolve_sae_folder`); a clear error when the folder is wrong."""
    from sae_lens import SAE

    try:
        path = resolve_sae_folder(path)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if not (path / "cfg.json").is_file():
        raise SystemExit(
            f"error: {path} is not a saved SAE folder (expected {path / 'cfg.json'} and "
            "sae_weights.safetensors, as written by SAE.save_model)"
        )
    return SAE.load_from_disk(path, device=device)


def writable_folder(text: str) -> Path:
    """argparse type: a folder that exists and is writable, or can be created (its
    nearest existing parent is a writable folder); never an existing file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is an existing file: expected a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r} is not writable: no write permission in {str(existing)!r}")
    return path


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
