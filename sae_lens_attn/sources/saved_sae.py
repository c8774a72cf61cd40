"""Check a saved SAE folder before anything expensive, then load it with SAELens.

`SAE.load_from_disk` on a damaged folder fails with a raw traceback (a JSON or safetensors
parser error, a KeyError, a size mismatch inside `load_state_dict`), and a command only
sees it after loading the model. `check_saved_sae` reads `cfg.json` and the safetensors
header only (no tensor data): it finds an empty, truncated or garbled weights file, bad
JSON, an unknown or missing architecture, missing or mistyped fields, and weights whose
names or shapes do not match the config. Each failure is an `InvalidInputError` (a
`ValueError`; `MissingInputError`, also a `FileNotFoundError`, for missing files) whose
message says what is wrong and what is valid. `load_saved_sae` then loads the SAE and
checks its weights in memory (`sae_lens_attn.sources.weight_check`).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens_attn.errors import InvalidInputError, MissingInputError

if TYPE_CHECKING:
    from sae_lens import SAE

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SAVED_BY = "as written by SAE.save_model"
UNIONS = (typing.Union, types.UnionType)


def check_saved_sae(
    path: str | Path, hook_z: bool = False, label: str | None = None
) -> dict[str, tuple[int, ...]]:
    """Validate the SAE folder `path` without reading tensor data.

    Returns the parameter shapes the config implies, `{name: shape}`; raises
    `InvalidInputError` / `MissingInputError` with a one-line reason otherwise. The hook
    is checked before the SAE is built (`check_saved_hook`); `label` names the SAE in that
    message (default `SAE folder PATH`).
    """
    path = Path(path)
    what = f"SAE folder {path}"
    if not path.exists():
        raise MissingInputError(f"{what}: does not exist (expected a folder {SAVED_BY})")
    if not path.is_dir():
        raise InvalidInputError(
            f"{what}: is a file, expected a folder holding {CFG_FILENAME} "
            f"and {WEIGHTS_FILENAME} ({SAVED_BY})"
        )
    cfg_dict = _read_cfg(path / CFG_FILENAME, what)
    check_saved_hook(cfg_dict, label or what, hook_z)
    config = _config_from_dict(cfg_dict, f"{what}: {CFG_FILENAME}")
    found = _weight_shapes(path / WEIGHTS_FILENAME, what)
    expected, found = _shapes_as_loaded(config, found)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise InvalidInputError(
            f"{what}: {WEIGHTS_FILENAME} holds {sorted(found)}, but a "
            f"{config.architecture()!r} SAE has {sorted(expected)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {unexpected})" if unexpected else "")
        )
    for name, shape in expected.items():
        if found[name] != shape:
            raise InvalidInputError(
                f"{what}: {name} has shape {list(found[name])} in {WEIGHTS_FILENAME}, but "
                f"{CFG_FILENAME} (d_in={config.d_in}, d_sae={config.d_sae}) implies {list(shape)}"
            )
    return expected


def check_saved_hook(cfg_dict: dict[str, Any], what: str, hook_z: bool = False) -> None:
    """The hook check of every saved SAE, on its `cfg.json` before SAELens builds it: with
    `hook_z` (the SAE is the one a command analyses) its `hook_name` must be an attention
    `blocks.L.attn.hook_z` (an SAE with no hook name but a stored head layout passes);
    whatever `hook_z` says, hook_z reshaping (`reshape_activations="hook_z"`) needs a hook_z
    hook, which SAELens would refuse with an exception when building the SAE."""
    from sae_lens_attn.sources.pretrained_sae import check_hook_z

    metadata = cfg_dict.get("metadata") or {}
    hook_name = metadata.get("hook_name") or cfg_dict.get("hook_name")
    reshapes = cfg_dict.get("reshape_activations") == "hook_z"
    if reshapes or (hook_z and (hook_name or not metadata.get("head_layout"))):
        check_hook_z(hook_name, what)


def load_saved_sae(
    path: str | Path,
    device: str = "cpu",
    allow_nonfinite: bool = False,
    hook_z: bool = False,
    label: str | None = None,
) -> SAE:
    """`SAE.load_from_disk(path, device)` after `check_saved_sae(path, hook_z, label)`, its weights then
    checked once in memory (`weight_check.check_loaded_sae`: NaN or inf is a
    `NonFiniteWeightsError` unless `allow_nonfinite`, zero rows a warning, no usable
    feature a `NoLiveFeaturesError`); an SAE with hook_z reshaping gets its input shape
    checked (`_upstream.guard_hook_z_input`)."""
    from sae_lens import SAE

    from sae_lens_attn._upstream import guard_hook_z_input
    from sae_lens_attn.sources.weight_check import check_loaded_sae

    check_saved_sae(path, hook_z, label)
    sae = SAE.load_from_disk(path, device=device)
    check_loaded_sae(sae, f"SAE folder {path}", allow_nonfinite=allow_nonfinite)
    return guard_hook_z_input(sae)


def _read_cfg(cfg_path: Path, what: str) -> dict[str, Any]:
    if not cfg_path.is_file():
        raise MissingInputError(
            f"{what}: no {CFG_FILENAME} (expected {CFG_FILENAME} and "
            f"{WEIGHTS_FILENAME}, {SAVED_BY})"
        )
    try:
        cfg_dict = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"{what}: {CFG_FILENAME} is not valid JSON ({err})") from None
    if not isinstance(cfg_dict, dict):
        raise InvalidInputError(
            f"{what}: {CFG_FILENAME} holds a {type(cfg_dict).__name__}, "
            "expected a JSON object of config fields"
        )
    return cfg_dict


def _config_from_dict(cfg_dict: dict[str, Any], what: str) -> Any:
    """The SAELens config object `cfg_dict` describes, checked field by field."""
    from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting
    from sae_lens.registry import SAE_CLASS_REGISTRY

    from sae_lens_attn.plugins import register_architectures_with_sae_lens

    try:
        cfg_dict = handle_config_defaulting(dict(cfg_dict))
    except Exception as err:  # e.g. a sae_lens_version that is not a version
        raise InvalidInputError(f"{what}: not a SAELens config ({err})") from None
    architecture = cfg_dict.get("architecture")
    if architecture not in SAE_CLASS_REGISTRY:
        register_architectures_with_sae_lens()  # a no-op unless the autoload was skipped
    known = ", ".join(sorted(SAE_CLASS_REGISTRY))
    if architecture is None:
        raise InvalidInputError(f"{what}: no 'architecture' field; expected one of {known}")
    if not isinstance(architecture, str) or architecture not in SAE_CLASS_REGISTRY:
        raise InvalidInputError(
            f"{what}: unknown architecture {architecture!r}; SAELens knows "
            f"{known} (a plugin's architecture needs that plugin installed)"
        )
    config_class = SAE_CLASS_REGISTRY[architecture][1]
    _check_fields(cfg_dict, config_class, what)
    try:
        return config_class.from_dict(cfg_dict)
    except Exception as err:
        message = " ".join(str(err).split())
        raise InvalidInputError(f"{what}: not a valid {architecture!r} config: {message}") from None


def _check_fields(cfg_dict: dict[str, Any], config_class: type, what: str) -> None:
    """Required fields present, int fields ints (not "128", not true), sizes positive."""
    try:
        hints = typing.get_type_hints(config_class)
    except Exception:  # annotations a plugin's config cannot resolve: check presence only
        hints = {}
    required = [
        field.name
        for field in dataclasses.fields(config_class)
        if field.init
        and field.default is dataclasses.MISSING
        and field.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in cfg_dict]
    if missing:
        raise InvalidInputError(
            f"{what}: missing field(s) {', '.join(missing)} "
            f"(a {config_class.__name__} needs {', '.join(required)})"
        )
    for name, value in cfg_dict.items():
        hint = hints.get(name)
        allowed = typing.get_args(hint) if typing.get_origin(hint) in UNIONS else (hint,)
        wants_int = int in allowed and set(allowed) <= {int, type(None)}
        if (
            wants_int
            and value is not None
            and (isinstance(value, bool) or not isinstance(value, int))
        ):
            raise InvalidInputError(
                f"{what}: field {name} is {value!r} ({type(value).__name__}), expected an integer"
            )
    for name in ("d_in", "d_sae"):
        if cfg_dict[name] < 1:
            raise InvalidInputError(f"{what}: field {name} is {cfg_dict[name]}, expected >= 1")


def _shapes_as_loaded(
    config: Any, found: dict[str, tuple[int, ...]]
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(parameter shapes of the SAE `config` describes, the file's shapes after the SAE
    class's own `process_state_dict_for_loading`), all on the meta device: no data."""
    import torch
    from sae_lens.registry import SAE_CLASS_REGISTRY

    sae_class = SAE_CLASS_REGISTRY[config.architecture()][0]
    device = config.device
    config.device = "meta"
    try:
        with torch.device("meta"):
            sae = sae_class(config)
            state = {name: torch.empty(shape) for name, shape in found.items()}
            sae.process_state_dict_for_loading(state)  # e.g. JumpReLU's log_threshold
    finally:
        config.device = device
    expected = {name: tuple(tensor.shape) for name, tensor in sae.state_dict().items()}
    return expected, {name: tuple(tensor.shape) for name, tensor in state.items()}


def _weight_shapes(weights_path: Path, what: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from the safetensors header: a damaged file fails here, cheaply."""
    from safetensors import SafetensorError, safe_open

    if not weights_path.is_file():
        raise MissingInputError(f"{what}: no {WEIGHTS_FILENAME} ({SAVED_BY})")
    if weights_path.stat().st_size == 0:
        raise InvalidInputError(
            f"{what}: {WEIGHTS_FILENAME} is empty (0 bytes); save the SAE again with SAE.save_model"
        )
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise InvalidInputError(
            f"{what}: {WEIGHTS_FILENAME} is damaged or truncated and "
            f"cannot be read ({err}); save the SAE again"
        ) from None
