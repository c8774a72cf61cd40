"""Load the embedded default model (shipped in `embedded/`) or a TransformerLens hub model.

`embedded/` holds `config.json` (the HookedTransformerConfig arguments, how it was trained
and measured), `model.safetensors` (fp16 weights as trained, before any weight processing)
and `tokenizer/` (a `transformers` tokenizer folder). See `sae_lens_attn.models.train`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedTokenizerFast

EMBEDDED_NAME = "embedded"
EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"


class HubUnavailableError(RuntimeError):
    """A hub model could not be loaded (no network, no local cache)."""


def build_model_config(model_args: dict[str, Any], seed: int = 0) -> HookedTransformerConfig:
    """A CPU `HookedTransformerConfig` from the arguments saved in `config.json`."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(**model_args, seed=seed, device="cpu")


def read_embedded_config(folder: Path = EMBEDDED_DIR) -> dict[str, Any]:
    """The embedded model's `config.json`: model arguments, training record, measurements."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the embedded model was not built; run "
            "`python -m sae_lens_attn.models.train --out <folder>`"
        )
    return json.loads(path.read_text())


@lru_cache(maxsize=4)
def _cached_tokenizer(folder: str) -> PreTrainedTokenizerFast:
    from sae_lens_attn.models.tokenizer import load_tokenizer

    return load_tokenizer(Path(folder) / TOKENIZER_DIR)


def load_embedded_tokenizer(folder: Path = EMBEDDED_DIR) -> PreTrainedTokenizerFast:
    """The embedded byte-level BPE tokenizer (BOS = EOS = pad = `<|endoftext|>`, id 0)."""
    return _cached_tokenizer(str(Path(folder).resolve()))


def load_embedded_model(folder: Path = EMBEDDED_DIR, device: str = "cpu") -> HookedTransformer:
    """The embedded 2-layer model as a ready `HookedTransformer`, tokenizer attached.

    Weights are loaded in float32 and processed as `HookedTransformer.from_pretrained`
    processes hub models (LayerNorm folded, writing weights and unembed centred, value
    biases folded), so the embedded model and hub models go through the same code path.
    """
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer

    config = read_embedded_config(folder)
    model = HookedTransformer(build_model_config(config["model"]), move_to_device=False)
    model.set_tokenizer(load_embedded_tokenizer(folder))
    state_dict = {k: v.float() for k, v in load_file(Path(folder) / WEIGHTS_FILE).items()}
    model.load_and_process_state_dict(state_dict)
    model.eval()
    # TransformerLens prints "Moving model to device" on every `.to`: a loader says nothing
    return model.to(device, print_details=False)


def load_model(name: str, device: str = "cpu") -> HookedTransformer:
    """`"embedded"` -> the shipped model; a local Hugging Face model folder ->
    `load_hf_model_folder`; any other name -> `HookedTransformer.from_pretrained`.

    A hub model needs the Hugging Face hub (or its local cache); without it this raises
    `HubUnavailableError` (a `RuntimeError`) naming the embedded default.
    """
    if name == EMBEDDED_NAME:
        return load_embedded_model(device=device)
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import make_model_alias_map

    from sae_lens_attn.models.hf_folder import load_hf_model_folder, looks_like_path

    if name.lower() not in make_model_alias_map() and looks_like_path(name):
        return load_hf_model_folder(name, device=device)

    try:
        return HookedTransformer.from_pretrained(name, device=device)
    except (OSError, ConnectionError) as error:  # requests/hf_hub errors derive from these
        raise HubUnavailableError(
            f"could not load {name!r} from the Hugging Face hub ({type(error).__name__}: "
            f"{error}). Without network access use the model shipped with the package: "
            f"--model {EMBEDDED_NAME} (sae_lens_attn.models.load_embedded_model())."
        ) from error
