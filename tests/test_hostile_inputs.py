"""Hostile inputs at the Python API: damaged SAE folders, layouts that do not fit, rows
longer than n_ctx, flat input to hook_z SAEs, writes into block-diagonal dense views, dead
decoder rows. Each is refused with one clear line (a ValueError / FileNotFoundError), or
gives the right result."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import make_tiny_model
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from sae_lens_attn.architectures.block_diagonal import BlockDiagonalSAE, BlockDiagonalSAEConfig
from sae_lens_attn.detectors.enrichment import EnrichmentDetector
from sae_lens_attn.detectors.induction import live_features
from sae_lens_attn.errors import InvalidInputError, MissingInputError
from sae_lens_attn.sources.head_layout import HeadLayout
from sae_lens_attn.sources.model_inputs import check_token_rows
from sae_lens_attn.sources.saved_sae import check_saved_sae, load_saved_sae

HOOK = "blocks.1.attn.hook_z"


def damaged(good, tmp_path, damage):
    folder = tmp_path / "sae"
    shutil.copytree(good, folder)
    damage(folder)
    return folder


def edit_cfg(change):
    def damage(folder):
        cfg = json.loads((folder / "cfg.json").read_text())
        change(cfg)
        (folder / "cfg.json").write_text(json.dumps(cfg))
    return damage


def truncate(folder):
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])


@pytest.mark.parametrize(
    "damage, message",
    [
        (truncate, "sae_weights.safetensors is damaged or truncated and cannot be read"),
        (lambda f: (f / "sae_weights.safetensors").write_bytes(b""), "sae_weights.safetensors is empty (0 bytes)"),
        (lambda f: (f / "sae_weights.safetensors").write_bytes(b"garbage!" * 20), "damaged or truncated"),
        (lambda f: (f / "cfg.json").write_text("{'d_in': 64"), "cfg.json is not valid JSON"),
        (lambda f: (f / "cfg.json").write_text("[]"), "cfg.json holds a list, expected a JSON object"),
        (edit_cfg(lambda c: c.pop("architecture")), "no 'architecture' field; expected one of"),
        (edit_cfg(lambda c: c.update(architecture="hexagonal")), "unknown architecture 'hexagonal'; SAELens knows"),
        (edit_cfg(lambda c: c.pop("d_sae")), "missing field(s) d_sae"),
        (edit_cfg(lambda c: c.update(d_in="128")), "field d_in is '128' (str), expected an integer"),
        (edit_cfg(lambda c: c.update(d_sae=0)), "field d_sae is 0, expected >= 1"),
        (edit_cfg(lambda c: c.update(d_sae=32)), "W_dec has shape [16, 64] in sae_weights.safetensors, but cfg.json (d_in=64, d_sae=32) implies [32, 64]"),
    ],
)
def test_damaged_sae_folder_is_refused_with_one_line(saved_sae_dir, tmp_path, damage, message):
    folder = damaged(saved_sae_dir, tmp_path, damage)
    with pytest.raises(InvalidInputError) as raised:
        check_saved_sae(folder)
    text = str(raised.value)
    assert text.startswith(f"SAE folder {folder}: ") and "\n" not in text
    assert message in text


def test_missing_sae_files_are_file_not_found_errors(saved_sae_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_saved_sae(tmp_path / "nowhere")
    folder = damaged(saved_sae_dir, tmp_path, lambda f: (f / "sae_weights.safetensors").unlink())
    with pytest.raises(MissingInputError, match="no sae_weights.safetensors"):
        check_saved_sae(folder)


def test_valid_folders_load_including_block_diagonal(saved_sae_dir, tmp_path):
    assert check_saved_sae(saved_sae_dir)["W_enc"] == (64, 16)
    BlockDiagonalSAE(BlockDiagonalSAEConfig(d_in=64, d_sae=32, n_heads=4)).save_model(tmp_path / "bd")
    assert check_saved_sae(tmp_path / "bd")["W_dec_blocks"] == (4, 8, 16)
    assert type(load_saved_sae(tmp_path / "bd")).__name__ == "BlockDiagonalSAE"


def test_stored_head_layout_is_checked_against_model_and_hook(tiny_model):
    layout = HeadLayout.for_model(tiny_model, 0)  # layer 0 ...
    sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=8, metadata=SAEMetadata(hook_name=HOOK)))
    sae.cfg.metadata["head_layout"] = layout.to_dict()  # ... stored on a layer-1 SAE
    with pytest.raises(InvalidInputError, match="head_layout names blocks.0.attn.hook_z but the SAE's hook_name is 'blocks.1.attn.hook_z'"):
        HeadLayout.from_sae(sae, tiny_model)
    sae.cfg.metadata["head_layout"] = {**HeadLayout.for_model(tiny_model, 1).to_dict(), "n_model_heads": 8}
    with pytest.raises(InvalidInputError, match="does not fit the model: the model has layers 0..1 with 4 heads of d_head=16"):
        HeadLayout.from_sae(sae, tiny_model)
    sae.cfg.metadata["head_layout"] = {"layer": 1, "heads": "0,1", "d_head": 16, "n_model_heads": 4}
    with pytest.raises(InvalidInputError, match="heads a list of integers"):
        HeadLayout.from_sae(sae, tiny_model)


def test_rows_longer_than_n_ctx_are_refused_and_the_model_stays_usable():
    model = make_tiny_model(n_ctx=16)
    tokens = torch.randint(0, 101, (2, 16))
    before = model(tokens)
    with pytest.raises(InvalidInputError, match="rows of 17 tokens, but the model's context is n_ctx=16"):
        check_token_rows(torch.randint(0, 101, (2, 17)), model)
    from sae_lens_attn.sources.hook_z import HookZSource

    with pytest.raises(InvalidInputError, match="n_ctx=16"):
        HookZSource(model, 1).activations(torch.randint(0, 101, (2, 40)))
    torch.testing.assert_close(model(tokens), before)  # no buffer grew in place
    with pytest.raises(InvalidInputError, match="token id 101 is outside the model's vocabulary 0..100"):
        check_token_rows(torch.tensor([[1, 101]]), model)


def test_flat_input_leaves_hook_z_sae_intact(tmp_path):
    """SAELens caches d_head from the first input; a flat one must not poison the object."""
    StandardSAE(StandardSAEConfig(d_in=64, d_sae=16, reshape_activations="hook_z",
                                  metadata=SAEMetadata(hook_name=HOOK))).save_model(tmp_path / "sae")
    sae = load_saved_sae(tmp_path / "sae")
    with pytest.raises(InvalidInputError, match=r"SAE input of shape \[5, 64\]: this SAE has reshape_activations='hook_z'"):
        sae.encode(torch.randn(5, 64))
    assert getattr(sae, "d_head", None) is None
    z = torch.randn(5, 4, 16)
    assert sae(z).shape == (5, 4, 16)  # decodes to the right shape afterwards


def test_block_diagonal_dense_views_refuse_writes():
    sae = BlockDiagonalSAE(BlockDiagonalSAEConfig(d_in=8, d_sae=4, n_heads=2))
    before = sae.W_dec_blocks.detach().clone()
    for write in (lambda: setattr(sae.W_dec, "data", torch.zeros(4, 8)),
                  lambda: sae.W_dec.copy_(torch.zeros(4, 8)),
                  lambda: sae.W_dec.data.zero_()):
        with pytest.raises(RuntimeError, match="write into W_dec_blocks instead"):
            write()
    with pytest.raises(RuntimeError, match="W_enc_blocks"):
        sae.W_enc.mul_(2)
    assert torch.equal(sae.W_dec_blocks, before)
    assert type(sae.W_dec.norm(dim=1)) is torch.Tensor  # results of reads are plain tensors


def test_zero_and_nan_decoder_rows_are_dead_in_every_detector(tiny_model):
    layout = HeadLayout.for_model(tiny_model, 1)
    sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=6))
    layout.store_in(sae)
    torch.nn.init.normal_(sae.W_dec, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.W_dec[1] = 0.0
        sae.W_dec[4, 3] = float("nan")
    assert live_features(tiny_model, sae, layout, torch.arange(6)).tolist() == [True, False, True, True, False, True]
    rows = EnrichmentDetector().detect(tiny_model, sae, layout,
                                       token_sets={"low": list(range(50))})
    assert [row.feature for row in rows] == list(range(6))
    assert [row.live for row in rows] == [True, False, True, True, False, True]
    assert rows[4].evidence["summary"] == "dead: zero or non-finite decoder row"
    assert all(math.isfinite(row.score) for row in rows if row.live)
    assert math.isnan(rows[1].score)
