"""Arguments and loaders shared by several subcommands (model, SAE path, output folder)."""

from __future__ import annotations

import argparse
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
