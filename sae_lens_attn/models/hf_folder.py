"""A model from a local Hugging Face folder (`save_pretrained`, or a downloaded snapshot),
as a `HookedTransformer`, with no network.

TransformerLens builds the config from the folder's own `config.json` (its
`architectures` entry picks TransformerLens's conversion, e.g. `GPT2LMHeadModel`) and
converts the weights of the `AutoModelForCausalLM` loaded from the folder (its `hf_model`
path). `HookedTransformer.from_pretrained` itself is not called: in transformer-lens 2.17
it accepts only registered model names (`get_official_model_name`), and with one it reads
that name's config from the hub, not the folder's. The steps after the config are the
same calls with the same defaults (LayerNorm folded, writing weights and unembed centred,
value biases folded), so a folder holding gpt2's weights gives the same model as
`--model gpt2-small`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens_attn.errors import InvalidInputError, MissingInputError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

CONFIG_FILE = "config.json"


def looks_like_path(text: str) -> bool:
    """A value meant as a folder: it exists, or starts like a path (`/`, `.`, `~`)."""
    return Path(text).expanduser().exists() or text.startswith(("/", ".", "~"))


def check_hf_model_folder(folder: str | Path, option: str = "--model") -> dict[str, Any]:
    """The folder's `config.json`, checked to name an architecture; a missing folder or
    config is a `MissingInputError`, a bad one an `InvalidInputError`."""
    what = f"{option} {folder}"
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise MissingInputError(
            f"{what}: no such model folder (expected a Hugging Face model "
            "folder with config.json, 'embedded' or a TransformerLens name)"
        )
    if not folder.is_dir():
        raise InvalidInputError(f"{what}: is a file; expected a Hugging Face model folder")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise MissingInputError(
            f"{what}: no {CONFIG_FILE}; expected a Hugging Face model folder "
            "(as written by save_pretrained)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"{what}: {CONFIG_FILE} is not valid JSON ({err})") from None
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if not architectures or not isinstance(architectures, list):
        raise InvalidInputError(
            f"{what}: {CONFIG_FILE} names no 'architectures' (e.g. "
            '["GPT2LMHeadModel"]); TransformerLens picks its conversion by it'
        )
    return config


def load_hf_model_folder(folder: str | Path, device: str = "cpu") -> HookedTransformer:
    """The model saved in `folder` (`AutoModelForCausalLM.save_pretrained`) as a
    `HookedTransformer`, its tokenizer attached when the folder has one.

    Example: `load_hf_model_folder("models/gpt2")` after
    `AutoModelForCausalLM.from_pretrained("gpt2").save_pretrained("models/gpt2")`.
    """
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM

    check_hf_model_folder(folder)
    folder = str(Path(folder).expanduser().resolve())
    hf_model = AutoModelForCausalLM.from_pretrained(folder)
    cfg = loading.get_pretrained_model_config(
        folder, hf_cfg=hf_model.config.to_dict(), fold_ln=True, device=device
    )
    state_dict = loading.get_pretrained_state_dict(folder, cfg, hf_model)
    del hf_model
    model = HookedTransformer(cfg, _folder_tokenizer(folder), move_to_device=False)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=True,
        center_writing_weights=True,
        center_unembed=True,
        fold_value_biases=True,
    )
    model.eval()
    return model.to(device, print_details=False)


def _folder_tokenizer(folder: str) -> Any:
    """The folder's tokenizer (`AutoTokenizer`), or None when it holds none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError):  # no tokenizer files in the folder
        return None
