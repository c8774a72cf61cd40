"""Shared fixtures: small deterministic TransformerLens models and token batches."""

from __future__ import annotations

import sys

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

# torchrun with two local ranks, as the distributed tests and the torchrun example start it
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def make_tiny_model(
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    d_head: int = 16,
    d_vocab: int = 101,
    n_ctx: int = 64,
    attn_only: bool = False,
    seed: int = 0,
) -> HookedTransformer:
    """A random-init HookedTransformer with LayerNorm and (unless attn_only) MLPs."""
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=None if attn_only else 4 * d_model,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        act_fn=None if attn_only else "gelu",
        attn_only=attn_only,
        normalization_type="LN",
        seed=seed,
        device="cpu",
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


@pytest.fixture(scope="session")
def tiny_model() -> HookedTransformer:
    """2 layers, d_model 64, 4 heads x 16, vocab 101, LayerNorm + MLPs, seed 0."""
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_tokens() -> torch.Tensor:
    """`[8, 32]` random token ids for `tiny_model`, seed 0."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 101, (8, 32), generator=generator)


@pytest.fixture(scope="session")
def saved_sae_dir(tmp_path_factory):
    """A saved dense SAE folder on blocks.1.attn.hook_z (d_in 64, d_sae 16), shared: tests
    that damage a folder copy it first."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    folder = tmp_path_factory.mktemp("saved_sae") / "sae"
    metadata = SAEMetadata(hook_name="blocks.1.attn.hook_z")
    StandardSAE(StandardSAEConfig(d_in=64, d_sae=16, metadata=metadata)).save_model(folder)
    return folder


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`):
    tiny matmuls gain nothing from threads, and on a shared CPU two contending OpenMP
    threads made test_block_diagonal_training about 5x slower (47 s against 9 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_with_tokenizer(tmp_path_factory):
    """`make_tiny_model(d_vocab=300, n_ctx=64)` with a BPE tokenizer trained on 20 texts of
    the embedded corpus, so commands can tokenize the corpus for it."""
    import itertools

    from sae_lens_attn.models.corpus import iter_corpus_texts
    from sae_lens_attn.models.tokenizer import load_tokenizer, save_tokenizer, train_bpe_tokenizer

    texts = list(itertools.islice(iter_corpus_texts("train"), 20))
    folder = save_tokenizer(train_bpe_tokenizer(texts, 300), tmp_path_factory.mktemp("tok"), 64)
    model = make_tiny_model(d_vocab=300, n_ctx=64)
    model.tokenizer = load_tokenizer(folder)
    return model


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if `detect`, `dashboard`, `circuit` or `atlas` loads a model: validation
    must come first."""
    from sae_lens_attn.commands import atlas, circuit, dashboard, detect

    def refuse(name):
        raise AssertionError("the model was loaded before the input was validated")

    for module in (detect, dashboard, circuit, atlas):
        monkeypatch.setattr(module, "load_model", refuse)
