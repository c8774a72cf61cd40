"""Arguments and loaders shared by several subcommands (model, SAE path, output folder).

The `check_*` functions run at the start of a command, before anything expensive; each
raises `InvalidInputError` with an `<option> <value>: <why, what is valid>` message.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sae_lens_attn.errors import InvalidInputError

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


def load_model(name: str) -> HookedTransformer:
    """The embedded model or a TransformerLens hub model, by name."""
    from sae_lens_attn.models import load_model as load_named_model

    check_model_name(name)
    return load_named_model(name)


def load_sae(path: Path, device: str = "cpu") -> SAE:
    """An SAE saved with SAELens's `save_model`, its folder checked first (see
    `sae_lens_attn.sources.saved_sae`): a damaged one is an `InvalidInputError`."""
    from sae_lens_attn.sources.saved_sae import load_saved_sae

    return load_saved_sae(path, device=device)


def check_sae_folders(*paths: Path) -> None:
    """Check saved SAE folders (config, weights header, shapes) without loading them."""
    from sae_lens_attn.sources.saved_sae import check_saved_sae

    for path in paths:
        check_saved_sae(path)


def check_features(features: list[int] | None, d_sae: int, option: str = "--features") -> None:
    """Every index in `features` (None: all) is a feature of an SAE with `d_sae` features."""
    bad = [feature for feature in features or [] if feature >= d_sae]
    if bad:
        raise InvalidInputError(f"{option}: feature {bad[0]} is out of range; this SAE has "
                                f"features 0..{d_sae - 1}")


def check_model_name(name: str) -> None:
    """`embedded` or a name TransformerLens knows (alias or official); else the closest
    names, instead of TransformerLens's list of every model."""
    if name == EMBEDDED_MODEL:
        return
    import difflib

    from transformer_lens import loading_from_pretrained as loading

    try:
        loading.get_official_model_name(name)
    except ValueError:
        aliases = [alias for names in loading.MODEL_ALIASES.values() for alias in names]
        known = [*loading.OFFICIAL_MODEL_NAMES, *aliases]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "for example gpt2-small, gelu-2l"
        raise InvalidInputError(
            f"--model {name!r}: not a TransformerLens model name; use '{EMBEDDED_MODEL}' (the "
            f"model shipped with the package) or a TransformerLens name ({hint})"
        ) from None


def check_device(name: str) -> None:
    """A torch device string that exists on this machine (cpu, cuda, cuda:1, mps)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise InvalidInputError(
            f"--device {name!r}: not a torch device; expected cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise InvalidInputError(
                f"--device {name!r}: this machine has {count} CUDA device(s); use cpu"
                + (f" or cuda:0..cuda:{count - 1}" if count else "")
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError(f"--device {name!r}: MPS is not available here; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise InvalidInputError(f"--device {name!r}: expected cpu, cuda, cuda:N or mps")


def check_output_folder(path: Path, option: str = "--out") -> None:
    """`path` is a folder, or can become one, and a file can be written there: checked
    by writing a probe file into the nearest existing folder (no folder is created)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidInputError(
            f"{option} {path}: is an existing file; expected a folder (created if missing)"
        )
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInputError(f"{option} {path}: {existing} is a file, so no folder can be "
                                "created there; expected a folder path")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-probe-"):
            pass
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise InvalidInputError(f"{option} {path}: cannot write into {existing} ({reason}); "
                                "choose a writable folder") from None


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
