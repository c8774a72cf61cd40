"""Offline stand-ins for the model hub, built by the tests themselves (nothing mocked):

- `save_tiny_gpt2(folder)`: a random tiny GPT-2 (transformers `GPT2Config`) with a small
  BPE tokenizer, written with `save_pretrained` as a local model folder;
- `lay_out_kk_cache(hf_home, ...)`: the Hugging Face cache as `huggingface_hub` lays it
  (`hub/models--OWNER--NAME/snapshots/REV/...`, `refs/main`) for SAELens's registered
  release `gpt2-small-hook-z-kk`, holding tiny SAEs in that release's own file format
  (`<name>.pt` weights + `<name>_cfg.json`), so `SAE.from_pretrained` runs its real
  registry lookup, `connor_rob_hook_z` loader and `hf_hub_download` with
  `HF_HUB_OFFLINE=1`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from sae_lens_attn.models.tokenizer import save_tokenizer, train_bpe_tokenizer

KK_RELEASE = "gpt2-small-hook-z-kk"
N_LAYERS, N_HEADS, D_HEAD, VOCAB = 2, 4, 16, 300
D_IN = N_HEADS * D_HEAD
TEXTS = ["def add(a, b):\n    return a + b\n", "import os\nclass Path(object): pass\n"]


def save_tiny_gpt2(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer GPT-2 (4 heads x 16) with a 300-token BPE tokenizer in `folder`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=N_LAYERS,
        n_head=N_HEADS,
        n_embd=D_IN,
        vocab_size=VOCAB,
        n_positions=64,
        n_ctx=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    # n_ctx: as in gpt2's own config.json; TransformerLens reads it
    GPT2LMHeadModel(config).save_pretrained(folder)
    save_tokenizer(train_bpe_tokenizer(TEXTS, vocab_size=VOCAB), folder, model_max_length=64)
    return folder


def kk_sae_weights(d_sae: int, seed: int) -> dict[str, torch.Tensor]:
    """A hook_z SAE state dict in the kk release's layout, decoder rows of unit norm."""
    generator = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, D_IN, generator=generator)
    return {
        "W_enc": torch.randn(D_IN, d_sae, generator=generator) * 0.3,
        "W_dec": W_dec / W_dec.norm(dim=1, keepdim=True),
        "b_enc": torch.zeros(d_sae),
        "b_dec": torch.zeros(D_IN),
    }


def lay_out_kk_cache(hf_home: Path, hooks: dict[str, str], d_sae: int = 32) -> dict[str, str]:
    """Fill `hf_home/hub` with the files of release `gpt2-small-hook-z-kk` for the SAE ids
    in `hooks` (`{sae_id: hook name written in its config}`); returns the environment that
    makes huggingface_hub read only that cache."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    lookup = get_pretrained_saes_directory()[KK_RELEASE]
    owner, name = lookup.repo_id.split("/")
    repo = hf_home / "hub" / f"models--{owner}--{name}"
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    for seed, (sae_id, hook_name) in enumerate(hooks.items()):
        weights_file = lookup.saes_map[sae_id]
        torch.save(kk_sae_weights(d_sae, seed), snapshot / weights_file)
        config = {"act_size": D_IN, "dict_size": d_sae, "act_name": hook_name}
        (snapshot / (weights_file.split(".pt")[0] + "_cfg.json")).write_text(json.dumps(config))
    return {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
