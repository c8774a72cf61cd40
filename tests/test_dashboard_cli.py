"""`sae-lens-attn dashboard`: a saved SAE and a model in, dashboard.html + features.json out."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_model
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from sae_lens_attn import cli
from sae_lens_attn.commands import dashboard as dashboard_command
from sae_lens_attn.detectors.results import FamilyRow, save_family_rows
from sae_lens_attn.models.tokenizer import load_tokenizer, save_tokenizer, train_bpe_tokenizer


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    text = ["def add(a, b):\n    return a + b\n", "import os\nclass Path(object): pass\n"]
    save_tokenizer(train_bpe_tokenizer(text, vocab_size=300), folder, model_max_length=64)
    model = make_tiny_model(d_vocab=300, seed=4)
    model.set_tokenizer(load_tokenizer(folder))
    return model


def test_dashboard_command_writes_page_and_json(tmp_path, monkeypatch, model, capsys):
    sae = StandardSAE(StandardSAEConfig(
        d_in=64, d_sae=32, metadata=SAEMetadata(hook_name="blocks.1.attn.hook_z")
    ))
    with torch.no_grad():
        sae.W_enc.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(0))
    sae.save_model(tmp_path / "sae")
    save_family_rows([FamilyRow("induction", 2, "induction", 0.7, {"summary": "x"})], tmp_path)
    monkeypatch.setattr(dashboard_command, "load_model", lambda name: model)

    code = cli.main([
        "dashboard", "--sae", str(tmp_path / "sae"), "--model", "tiny", "--features", "1-2,5",
        "--n-prompts", "24", "--context-size", "32", "--families", str(tmp_path / "families.json"),
        "--out", str(tmp_path / "out"),
    ])
    assert code == 0
    assert "dashboard.html" in capsys.readouterr().out
    document = json.loads((tmp_path / "out" / "features.json").read_text())
    assert [f["feature_index"] for f in document["features"]] == [1, 2, 5]
    assert document["features"][1]["families"]["families"][0]["family"] == "induction"
    assert document["heads"] == ["L1H0", "L1H1", "L1H2", "L1H3"]
    assert (tmp_path / "out" / "dashboard.html").stat().st_size > 1e6  # scripts inlined


def test_dashboard_command_rejects_features_the_sae_does_not_have(tmp_path, monkeypatch, model, capsys):
    StandardSAE(StandardSAEConfig(
        d_in=64, d_sae=8, metadata=SAEMetadata(hook_name="blocks.1.attn.hook_z")
    )).save_model(tmp_path / "sae")
    monkeypatch.setattr(dashboard_command, "load_model", lambda name: model)
    code = cli.main(["dashboard", "--sae", str(tmp_path / "sae"), "--features", "0,9",
                     "--n-prompts", "4", "--context-size", "16", "--out", str(tmp_path / "out")])
    assert code == 2
    assert "feature 9 is out of range; this SAE has features 0..7" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
