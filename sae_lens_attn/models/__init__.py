"""The embedded default model: a small 2-layer transformer trained on the Python stdlib.

`load_model(name)` gives it (name "embedded"), a TransformerLens hub model or a local
Hugging Face model folder (`load_hf_model_folder`) through the same path; `corpus_dataset` gives its corpus as token rows for SAELens. Importing this
package does not import torch.
"""

from sae_lens_attn.models.dataset import corpus_dataset
from sae_lens_attn.models.embedded import (
    EMBEDDED_DIR,
    EMBEDDED_NAME,
    load_embedded_model,
    load_embedded_tokenizer,
    load_model,
    read_embedded_config,
)
from sae_lens_attn.models.hf_folder import load_hf_model_folder
from sae_lens_attn.models.induction import induction_scores

__all__ = [
    "EMBEDDED_DIR",
    "EMBEDDED_NAME",
    "corpus_dataset",
    "induction_scores",
    "load_hf_model_folder",
    "load_embedded_model",
    "load_embedded_tokenizer",
    "load_model",
    "read_embedded_config",
]
