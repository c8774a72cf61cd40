"""`sae-lens-attn circuit`: tables, summary and plots from saved SAEs and a prompt."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import pytest
import torch
from conftest import make_tiny_model
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from sae_lens_attn import cli
from sae_lens_attn.commands import circuit as circuit_command
from sae_lens_attn.models.tokenizer import load_tokenizer, save_tokenizer, train_bpe_tokenizer

PROMPT = "def add(a, b): return a + b\ndef sub(a, b): return a - b\ndef add"


def saved_sae(folder, hook_name: str, d_in: int, d_sae: int, seed: int) -> str:
    sae = StandardSAE(
        StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook_name))
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_(0.0, 0.3, generator=generator)
    sae.save_model(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_model_with_tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    text = [PROMPT * 3, "return value of a function def class"]
    save_tokenizer(train_bpe_tokenizer(text, vocab_size=300), folder, model_max_length=64)
    model = make_tiny_model(d_vocab=300, seed=4)
    model.set_tokenizer(load_tokenizer(folder))
    return model


def run_circuit(monkeypatch, model, *args: str) -> int:
    monkeypatch.setattr(circuit_command, "load_model", lambda name: model)
    return cli.main(["circuit", "--model", "tiny", "--prompt", PROMPT, *args])


def test_circuit_command_writes_tables_and_plots_that_add_up(
    tmp_path, monkeypatch, tiny_model_with_tokenizer, capsys
):
    sae = saved_sae(tmp_path / "sae", "blocks.1.attn.hook_z", 64, 64, seed=1)
    mlp_sae = saved_sae(tmp_path / "mlp0", "blocks.0.hook_mlp_out", 64, 128, seed=2)
    out = tmp_path / "out"
    code = run_circuit(
        monkeypatch, tiny_model_with_tokenizer,
        "--sae", sae, "--upstream-sae", mlp_sae, "--feature", "5", "--out", str(out),
    )
    assert code == 0
    assert "feature 5 at position" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"upstream.csv", "query_key.csv", "downstream.csv", "summary.json",
            "upstream.html", "effects.html", "plotly.min.js"} <= names

    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["closure_error"]) < 1e-4
    with (out / "upstream.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    by_source: dict[int, float] = defaultdict(float)
    for row in rows:
        if row["source"]:
            by_source[int(row["source"])] += float(row["contribution"])
    for source in summary["top_sources"]:
        assert by_source[source["source"]] == pytest.approx(source["dfa"], abs=1e-4)
    components = {row["component"] for row in rows}
    assert "0_mlp_out:error" in components and "0_mlp_out" not in components
    assert any(c.startswith("0_mlp_out:f") for c in components)

    with (out / "downstream.csv").open() as handle:
        effects = list(csv.DictReader(handle))
    direct = [float(row["direct"]) for row in effects[:10]]
    assert direct == sorted(direct, reverse=True)
    for row in effects:
        assert float(row["indirect"]) == pytest.approx(
            float(row["total"]) - float(row["direct"]), abs=1e-4
        )


def test_circuit_command_rejects_a_feature_out_of_range(
    tmp_path, monkeypatch, tiny_model_with_tokenizer, capsys
):
    sae = saved_sae(tmp_path / "sae", "blocks.1.attn.hook_z", 64, 64, seed=1)
    code = run_circuit(
        monkeypatch, tiny_model_with_tokenizer,
        "--sae", sae, "--feature", "64", "--out", str(tmp_path / "out"),
    )
    assert code == 2
    assert capsys.readouterr().err.endswith("this SAE has features 0..63\n")
    assert not (tmp_path / "out").exists()
