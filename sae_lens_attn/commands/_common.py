"""Arguments and loaders shared by several subcommands (model, SAE path, output folder).

The `check_*` functions run at the start of a command, before anything expensive; each
raises `InvalidInputError` with an `<option> <value>: <why, what is valid>` message.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sae_lens_attn.commands._values import positive_int
from sae_lens_attn.errors import InvalidInputError

if TYPE_CHECKING:
    import torch
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.sources.pretrained_sae import PretrainedSAEName

EMBEDDED_MODEL = "embedded"


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=EMBEDDED_MODEL,
        help=f"'{EMBEDDED_MODEL}' (the small model shipped with the package, default), a "
        "TransformerLens model name such as gpt2-small or gelu-2l (from the model hub or its "
        "cache), or a local Hugging Face model folder (save_pretrained; docs/published-saes.md)",
    )


def add_sae_argument(parser: argparse.ArgumentParser) -> None:
    """`--sae SAE` and `--sae-name NAME`. SAE is a saved SAE folder (SAELens's `save_model`,
    or one SAE of a `train` run, `OUT/NAME`), a `train` output folder (there `--sae-name`
    picks one SAE of its `saes.json`, not needed when it lists one) or, when no such folder
    exists, a SAELens pretrained SAE as `RELEASE/SAE_ID` (`sources.pretrained_sae`).
    `args.sae` is the SAE's folder (or the name) once both are parsed, in either order.
    `--allow-nonfinite` goes with them: pass `args.allow_nonfinite` to `load_sae`."""
    parser.add_argument(
        "--sae",
        required=True,
        action=_SAEFolderAction,
        help="an SAE folder (saved by SAELens, or OUT/NAME of a train run), a train output "
        "folder with saes.json (pick one of its SAEs with --sae-name), or a SAELens "
        "pretrained SAE as RELEASE/SAE_ID, e.g. gpt2-small-hook-z-kk/blocks.5.hook_z "
        "(from the model hub or its cache; docs/published-saes.md)",
    )
    parser.add_argument(
        "--sae-name",
        default=None,
        action=_SAEFolderAction,
        help="name of the SAE in --sae's saes.json (as `sae-lens-attn train` lists them); "
        "not needed when it lists one SAE (default: none)",
    )
    add_allow_nonfinite_argument(parser)


def add_allow_nonfinite_argument(parser: argparse.ArgumentParser) -> None:
    """`--allow-nonfinite`, for every command that loads an SAE: pass
    `args.allow_nonfinite` to `load_sae`."""
    parser.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="go on when the SAE's weights hold NaN or inf: the affected features are skipped "
        "(never live, no class, no page) and listed in the output; without it such an SAE is "
        "refused (docs/reliability.md)",
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
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads (default: $OMP_NUM_THREADS if set, else the CPU count capped "
        f"at {DEFAULT_MAX_THREADS}: {default_threads()} here); idle threads sleep rather than "
        "spin, so a busy machine does not slow every step (docs/runtime.md)",
    )
    group.add_argument(
        "--no-huge-pages",
        dest="huge_pages",
        action="store_false",
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
            raise InvalidInputError(
                f"{path} holds {len(entries)} SAEs ({SAE_LIST_FILENAME}); choose one "
                f"with --sae-name: {names}"
            )
        [entry] = entries
    else:
        matches = [entry for entry in entries if entry["name"] == name]
        if not matches:
            raise InvalidInputError(f"no SAE named {name!r} in {listing}; its SAEs are: {names}")
        entry = matches[0]
    folder = path / entry["path"]
    if not folder.resolve().is_relative_to(path.resolve()):
        raise InvalidInputError(
            f"{listing}: path {entry['path']!r} of {entry['name']!r} leaves {path}"
        )
    return folder


def sae_reference(value: str | Path, option: str = "--sae") -> Path | PretrainedSAEName:
    """What `--sae value` names: an SAE folder (`resolve_sae_folder`) when `value` exists
    or is written like a path (`/`, `.`, `~` first), else a SAELens pretrained SAE
    `RELEASE/SAE_ID` (checked against SAELens's registry: an `InvalidInputError` listing
    the closest releases or ids when it is not there)."""
    from sae_lens_attn.models.hf_folder import looks_like_path
    from sae_lens_attn.sources.pretrained_sae import parse_pretrained_name

    if looks_like_path(str(value)):
        return resolve_sae_folder(Path(value))
    return parse_pretrained_name(str(value), option)


def load_sae(
    path: str | Path,
    device: str = "cpu",
    hook_z: bool = True,
    option: str = "--sae",
    allow_nonfinite: bool = False,
) -> SAE:
    """The one SAE loader of every command: an SAE saved with SAELens's `save_model`, one
    SAE of a `train` output folder (`resolve_sae_folder`), its folder checked first (see
    `sae_lens_attn.sources.saved_sae`: a damaged one is an `InvalidInputError`), or a
    SAELens pretrained SAE `RELEASE/SAE_ID` (`sources.pretrained_sae.load_pretrained_sae`:
    registry and hook checked before the weights load). With `hook_z` (default) an SAE
    whose `hook_name` is not `blocks.L.attn.hook_z` is refused before any model loads.
    Either way the weights are checked once loaded (`sources.weight_check`): NaN/inf is a
    `NonFiniteWeightsError` unless `allow_nonfinite` (`--allow-nonfinite`), no usable
    feature a `NoLiveFeaturesError` (exit 1)."""
    from sae_lens_attn.sources.pretrained_sae import load_pretrained_sae
    from sae_lens_attn.sources.saved_sae import load_saved_sae

    reference = sae_reference(path, option)
    if not isinstance(reference, Path):
        return load_pretrained_sae(
            reference, device=device, hook_z=hook_z, option=option, allow_nonfinite=allow_nonfinite
        )
    return load_saved_sae(
        reference, device, allow_nonfinite, hook_z=hook_z, label=f"{option} {path}"
    )


def report_skipped(sae: SAE) -> tuple[int, ...]:
    """Print how many features `--allow-nonfinite` skipped (nothing when none); returns them."""
    from sae_lens_attn.sources.weight_check import format_indices, skipped_features

    skipped = skipped_features(sae)
    if skipped:
        print(
            f"skipped {len(skipped)} of {sae.cfg.d_sae} features with NaN/inf weights "
            f"(--allow-nonfinite): {format_indices(skipped)}"
        )
    return skipped


def check_features_fire(
    model: HookedTransformer,
    sae: SAE,
    features: Sequence[int] | None,
    tokens: torch.Tensor | None,
    what: str,
) -> None:
    """Warn how many of `features` (None: all) never fire on `tokens [n, pos]` (`what`
    names them, e.g. "the 64 evaluation sequences"); `NoLiveFeaturesError` when none
    does. Features already dead by their weights are left to the load-time warning."""
    if tokens is None:
        return
    import torch

    from sae_lens_attn.dead import silent_label
    from sae_lens_attn.detectors.induction import live_features
    from sae_lens_attn.errors import NoLiveFeaturesError
    from sae_lens_attn.sources.head_layout import HeadLayout
    from sae_lens_attn.sources.weight_check import SAEWeightWarning, format_indices

    index = torch.arange(sae.cfg.d_sae) if features is None else torch.as_tensor(list(features))
    layout = HeadLayout.from_sae(sae, model)
    usable = live_features(model, sae, layout, index)
    fired = live_features(model, sae, layout, index, tokens)
    silent = index[usable & ~fired].tolist()
    n_tokens = tokens.numel()
    if not bool(fired.any()):
        raise NoLiveFeaturesError(
            f"no feature is live: none of the {len(index)} features analysed fires on {what} "
            f"({n_tokens} tokens), so every result would be empty; nothing written"
        )
    if silent:
        warnings.warn(
            f"{len(silent)} of {len(index)} features never fire on {what} ({n_tokens} "
            f"tokens; {format_indices(silent)}): {silent_label(n_tokens)}, so not live",
            SAEWeightWarning,
            stacklevel=2,
        )


def check_sae_folders(*paths: str | Path, hook_z: bool = True, option: str = "--sae") -> None:
    """Check SAEs without loading their weights: saved folders (config, weights header,
    shapes), pretrained names (registry, config, hook_z unless `hook_z` is False)."""
    from sae_lens_attn.sources.pretrained_sae import check_pretrained_sae
    from sae_lens_attn.sources.saved_sae import check_saved_sae

    for path in paths:
        reference = sae_reference(path, option)
        if isinstance(reference, Path):
            check_saved_sae(reference, hook_z, f"{option} {path}")
        else:
            check_pretrained_sae(reference, option, hook_z)


def check_features(features: list[int] | None, d_sae: int, option: str = "--features") -> None:
    """Every index in `features` (None: all) is a feature of an SAE with `d_sae` features."""
    bad = [feature for feature in features or [] if feature >= d_sae]
    if bad:
        raise InvalidInputError(
            f"{option}: feature {bad[0]} is out of range; this SAE has features 0..{d_sae - 1}"
        )


def check_model_name(name: str) -> None:
    """`embedded`, a name TransformerLens knows (alias or official) or a local Hugging Face
    model folder (`check_hf_model_folder`); else the closest names, instead of
    TransformerLens's list of every model."""
    if name == EMBEDDED_MODEL:
        return
    import difflib

    from transformer_lens import loading_from_pretrained as loading

    from sae_lens_attn.models.hf_folder import check_hf_model_folder, looks_like_path

    try:
        loading.get_official_model_name(name)
    except ValueError:
        if looks_like_path(name):
            check_hf_model_folder(name)
            return
        aliases = [alias for names in loading.MODEL_ALIASES.values() for alias in names]
        known = [*loading.OFFICIAL_MODEL_NAMES, *aliases]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "for example gpt2-small, gelu-2l"
        raise InvalidInputError(
            f"--model {name!r}: not a TransformerLens model name nor a model folder; use "
            f"'{EMBEDDED_MODEL}' (the model shipped with the package), a TransformerLens name "
            f"({hint}) or a Hugging Face model folder"
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
