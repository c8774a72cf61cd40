"""Arguments and loaders shared by several subcommands (model, SAE path, output folder).

The `check_*` functions run at the start of a command, before anything expensive; each
raises `InvalidInputError` with an `<option> <value>: <why, what is valid>` message.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from sae_lens_attn.commands._values import positive_int
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

    check_model_name(name)
    return load_named_model(name)


def resolve_sae_folder(path: Path, name: str | None = None) -> Path:
    """The SAE folder that `--sae path [--sae-name name]` means; a ValueError naming the
    choices when it is ambiguous or unknown.

    A folder without `saes.json` is taken as it is. In a `train` output folder (with
    `saes.json`), `name` picks an entry; without `name` the folder itself if it is the
    SAE (a one-SAE run), else its only entry.
    """
    from sae_lens_attn.training.outputs import SAE_CONFIG_FILENAME, SAE_LIST_FILENAME, read_sae_list

    path = Path(path)
    listing = path / SAE_LIST_FILENAME
    if not listing.is_file():
        if name is not None:
            raise InvalidInputError(
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
            raise InvalidInputError(f"{path} holds {len(entries)} SAEs ({SAE_LIST_FILENAME}); choose one "
                             f"with --sae-name: {names}")
        [entry] = entries
    else:
        matches = [entry for entry in entries if entry["name"] == name]
        if not matches:
            raise InvalidInputError(f"no SAE named {name!r} in {listing}; its SAEs are: {names}")
        entry = matches[0]
    folder = path / entry["path"]
    if not folder.resolve().is_relative_to(path.resolve()):
        raise InvalidInputError(f"{listing}: path {entry['path']!r} of {entry['name']!r} leaves {path}")
    return folder


def load_sae(path: Path, device: str = "cpu") -> SAE:
    """An SAE saved with SAELens's `save_model`, or one SAE of a `train` output folder
    (`resolve_sae_folder`), its folder checked first (see `sae_lens_attn.sources.saved_sae`):
    a damaged one is an `InvalidInputError`."""
    from sae_lens_attn.sources.saved_sae import load_saved_sae

    return load_saved_sae(resolve_sae_folder(path), device=device)


def check_sae_folders(*paths: Path) -> None:
    """Check saved SAE folders (config, weights header, shapes) without loading them."""
    from sae_lens_attn.sources.saved_sae import check_saved_sae

    for path in paths:
        check_saved_sae(resolve_sae_folder(path))


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
    problem = output_folder_problem(Path(path))
    if problem is not None:
        raise InvalidInputError(f"{option} {path}: {problem}")


def writable_folder(text: str) -> Path:
    """argparse type: `check_output_folder` at parse time."""
    problem = output_folder_problem(Path(text))
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return Path(text)


def output_folder_problem(path: Path) -> str | None:
    """Why `path` cannot be an output folder (None when it can): an existing file, a file
    on the way, or no write permission in its nearest existing folder."""
    if path.exists() and not path.is_dir():
        return "is an existing file; expected a folder (created if missing)"
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, so no folder can be created there; expected a folder path"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".write-probe-"):
            pass
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        return f"cannot write into {existing} ({reason}); choose a writable folder"
    return None
