"""Neuronpedia export against sae_dashboard's own Neuronpedia path on the same SAE.

The reference is what `NeuronpediaRunner.run` does for one batch, done here by hand (the
runner itself needs the hub for the model and a streamed dataset): `SaeVisRunner` with
the runner's config (its layout, `ignore_tokens`, `use_dfa=True`) on the SAE, then its
`NeuronpediaConverter.convert_to_np_json`. Our export must give the same fields with the
same values, sae_dashboard's DFA where both explain the same token, and only our
documented fields on top.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import make_tiny_model
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from sae_lens_attn import cli
from sae_lens_attn.dashboard import neuronpedia
from sae_lens_attn.dashboard.neuronpedia import (
    NeuronpediaSettings,
    export_neuronpedia,
    ignored_tokens,
    neuronpedia_layout,
    runner_config,
    vocab_dict,
)
from sae_lens_attn.detectors.results import FamilyRow
from sae_lens_attn.models.tokenizer import load_tokenizer, save_tokenizer, train_bpe_tokenizer
from sae_lens_attn.sources.head_layout import HeadLayout

OUR_FEATURE_FIELDS = {"head_attribution", "families"}
OUR_ACTIVATION_FIELDS = {"dfa_head_totals", "dfa_bias"}
OUR_BATCH_FIELDS = {"hook_name", "head_layout"}
SETTINGS = NeuronpediaSettings(
    model_id="tiny",
    sae_set="att-test",
    dataset="test rows",
    batch_size=4,
    top_acts_group_size=6,
    n_quantiles=3,
    quantile_group_size=2,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    text = ["def add(a, b):\n    return a + b\n", "import os\nclass Path(object): pass\n"]
    save_tokenizer(train_bpe_tokenizer(text, vocab_size=300), folder, model_max_length=64)
    model = make_tiny_model(d_vocab=300, seed=4)
    model.set_tokenizer(load_tokenizer(folder))
    return model


@pytest.fixture(scope="module")
def tokens():
    rows = torch.randint(1, 300, (40, 24), generator=torch.Generator().manual_seed(1))
    rows[:, 0] = 0  # BOS, as corpus rows start
    return rows


def unit_decoder_sae(d_sae: int = 10) -> StandardSAE:
    """A hook_z SAE whose decoder rows have norm 1, so sae_dashboard's decoder-norm fold
    (which our export leaves out) changes nothing and the two runs see the same SAE."""
    sae = StandardSAE(
        StandardSAEConfig(
            d_in=64, d_sae=d_sae, metadata=SAEMetadata(hook_name="blocks.1.attn.hook_z")
        )
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(64, d_sae, generator=generator) * 0.3)
        W_dec = torch.randn(d_sae, 64, generator=generator)
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))
        sae.b_enc.copy_(torch.randn(d_sae, generator=generator) * 0.05)
    return sae


def reference_batch(model, sae, tokens, features, folder) -> dict:
    """One batch as sae_dashboard's Neuronpedia runner makes it (see the module docstring)."""
    from sae_dashboard.neuronpedia.neuronpedia_converter import NeuronpediaConverter
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    layout = HeadLayout.from_sae(sae, model)
    sae.cfg.hook_name = sae.cfg.metadata.hook_name  # sae_dashboard's DFA reads cfg.hook_name
    config = SaeVisConfig(
        hook_point=layout.hook_name,
        features=features,
        minibatch_size_features=64,
        minibatch_size_tokens=32,
        feature_centric_layout=neuronpedia_layout(SETTINGS),
        perform_ablation_experiments=False,
        ignore_tokens=ignored_tokens(model),
        use_dfa=True,
        verbose=False,
    )
    data = SaeVisRunner(config).run(encoder=sae, model=model, tokens=tokens)
    np_cfg = runner_config(SETTINGS, layout, folder, tokens)
    return json.loads(
        NeuronpediaConverter.convert_to_np_json(model, data, np_cfg, vocab_dict(model))
    )


def test_export_matches_sae_dashboards_neuronpedia_batch(model, tokens, tmp_path):
    sae = unit_decoder_sae()
    features = [0, 2, 3, 5]
    export = export_neuronpedia(model, sae, tokens, tmp_path / "np", SETTINGS, features=features)
    ours = json.loads(export.batches[0].read_text())
    reference = reference_batch(model, unit_decoder_sae(), tokens, features, tmp_path)

    assert set(ours) == set(reference) | OUR_BATCH_FIELDS
    assert {k: ours[k] for k in reference if k != "features"} == {
        k: reference[k] for k in reference if k != "features"
    }
    assert [f["feature_index"] for f in ours["features"]] == features
    n_compared = n_checked = 0
    for mine, theirs in zip(ours["features"], reference["features"], strict=True):
        assert set(mine) == set(theirs) | OUR_FEATURE_FIELDS
        for key in (
            "neg_str",
            "pos_str",
            "n_prompts_total",
            "n_tokens_in_prompt",
            "dataset",
            "neuron_alignment_indices",
            "correlated_features_indices",
        ):
            assert mine[key] == theirs[key], key
        for key in (
            "neg_values",
            "pos_values",
            "frac_nonzero",
            "freq_hist_data_bar_values",
            "freq_hist_data_bar_heights",
            "logits_hist_data_bar_values",
            "decoder_weights_dist",
            "correlated_features_pearson",
        ):
            assert mine[key] == pytest.approx(theirs[key], abs=2e-3), key
        assert len(mine["activations"]) == len(theirs["activations"]) > 0
        for a, b in zip(mine["activations"], theirs["activations"], strict=True):
            assert set(a) == set(b) | OUR_ACTIVATION_FIELDS
            for key in ("tokens", "qualifying_token_index", "bin_min", "bin_max", "bin_contains"):
                assert a[key] == b[key], key
            assert a["values"] == pytest.approx(b["values"], abs=2e-3)
            assert len(a["dfa_values"]) == len(b["dfa_values"]) == len(a["tokens"])
            # sae_dashboard explains the maximum of the prompt (its DFA is keyed by prompt),
            # ours the example's own token: they differ for a second example of one prompt
            if a["dfa_targetIndex"] == b["dfa_targetIndex"]:
                assert a["dfa_values"] == pytest.approx(b["dfa_values"], abs=2e-3)
                assert a["dfa_maxValue"] == pytest.approx(b["dfa_maxValue"], abs=2e-3)
                n_compared += 1
            # our DFA adds up: per-head totals plus the bias terms give the activation
            # (-1: an example at the BOS position, which the converter's tokens leave out)
            target = a["qualifying_token_index"]
            if target >= 0:
                pre = sum(a["dfa_head_totals"]) + a["dfa_bias"]
                assert max(pre, 0.0) == pytest.approx(a["values"][target], abs=5e-3)
                n_checked += 1
    assert n_compared >= 5 and n_checked >= 20


def test_export_adds_head_attribution_families_and_skips_dead_features(model, tokens, tmp_path):
    sae = unit_decoder_sae()
    with torch.no_grad():
        sae.W_dec[4] = 0.0
    rows = [FamilyRow("induction", 1, "induction", 0.7, {"summary": "x"})]
    export = export_neuronpedia(
        model, sae, tokens, tmp_path / "np", SETTINGS, features=range(6), families=rows
    )
    assert export.skipped == (4,)
    assert [p.name for p in export.batches] == ["batch-0.json", "batch-1.json"]
    features = [f for p in export.batches for f in json.loads(p.read_text())["features"]]
    assert [f["feature_index"] for f in features] == [0, 1, 2, 3, 5]
    shares = sae.W_dec.detach().unflatten(1, (4, 16)).norm(dim=-1)
    for feature in features:
        index = feature["feature_index"]
        expected = (shares[index] / shares[index].sum()).tolist()
        assert feature["head_attribution"]["decoder"] == pytest.approx(expected, abs=1e-3)
        assert feature["decoder_weights_dist"] == pytest.approx(expected, abs=1e-3)
        assert feature["head_attribution"]["heads"] == ["L1H0", "L1H1", "L1H2", "L1H3"]
        assert feature["families"] == ([rows[0].to_dict()] if index == 1 else [])
    skipped = json.loads((tmp_path / "np" / "skipped_indexes.json").read_text())
    assert skipped["skipped_indexes"] == [4] and skipped["layer"] == "1"
    settings = json.loads((tmp_path / "np" / "run_settings.json").read_text())
    assert settings["hook_name"] == "blocks.1.attn.hook_z"
    assert settings["head_layout"] == {
        "layer": 1,
        "heads": [0, 1, 2, 3],
        "d_head": 16,
        "n_model_heads": 4,
    }


def test_export_resumes_and_a_failed_batch_leaves_no_file(model, tokens, tmp_path, monkeypatch):
    sae, out = unit_decoder_sae(), tmp_path / "np"
    real = neuronpedia.batch_document
    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(args[4])
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a killed run
        return real(*args, **kwargs)

    monkeypatch.setattr(neuronpedia, "batch_document", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        export_neuronpedia(model, sae, tokens, out, SETTINGS, features=range(8))
    assert sorted(p.name for p in out.iterdir()) == [
        "batch-0.json",
        "run_settings.json",
        "skipped_indexes.json",
    ]
    first = (out / "batch-0.json").read_bytes()
    calls.clear()
    monkeypatch.setattr(neuronpedia, "batch_document", real)
    export = export_neuronpedia(model, sae, tokens, out, SETTINGS, features=range(8))
    assert [p.name for p in export.batches] == ["batch-0.json", "batch-1.json"]
    assert (out / "batch-0.json").read_bytes() == first  # kept, not recomputed
    with pytest.raises(ValueError, match="holds an export with other settings"):
        export_neuronpedia(model, sae, tokens, out, SETTINGS, features=range(6))


def test_export_command_refuses_a_folder_that_is_not_an_export(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    sae = unit_decoder_sae()
    sae.save_model(tmp_path / "sae")
    code = cli.main(
        ["export", "neuronpedia", "--sae", str(tmp_path / "sae"), "--out", str(tmp_path / "out")]
    )
    assert code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after torch's thread warning
    assert line.startswith("error: --out") and "not a Neuronpedia export" in line
    assert os.listdir(tmp_path / "out") == ["notes.txt"]


def test_export_command_refuses_features_beyond_d_sae_before_writing(tmp_path, capsys):
    sae = unit_decoder_sae()
    sae.save_model(tmp_path / "sae")
    out = tmp_path / "out"
    argv = ["export", "neuronpedia", "--sae", str(tmp_path / "sae"), "--out", str(out)]
    code = cli.main([*argv, "--features", "0-3,10"])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1] == (
        "error: --features: feature 10 is out of range; this SAE has features 0..9"
    )
    assert not any("Traceback" in line for line in lines) and not out.exists()


def test_block_diagonal_sae_on_some_heads_exports_its_own_activations(model, tokens, tmp_path):
    from sae_lens_attn.architectures.block_diagonal import BlockDiagonalSAE, BlockDiagonalSAEConfig

    heads = [3, 1]
    layout = HeadLayout.for_model(model, 1, heads=heads)
    sae = BlockDiagonalSAE(BlockDiagonalSAEConfig(d_in=32, d_sae=8, n_heads=2))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_(0.0, 0.3, generator=generator)
    layout.store_in(sae)
    export = export_neuronpedia(model, sae, tokens, tmp_path / "np", SETTINGS, features=[1, 6])
    _, cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_z")
    acts = sae.encode(layout.select(cache["blocks.1.attn.hook_z"])).detach()
    batch = json.loads(export.batches[0].read_text())
    assert batch["head_layout"]["heads"] == heads
    fired = 0
    for feature in batch["features"]:
        index = feature["feature_index"]
        owner = index // 4  # position of the feature's head in `heads`
        assert feature["decoder_weights_dist"] == [float(h == heads[owner]) for h in range(4)]
        assert feature["head_attribution"]["heads"] == ["L1H3", "L1H1"]
        shown = [a for a in feature["activations"] if a["qualifying_token_index"] >= 0]
        for activation in shown:
            value = activation["values"][activation["qualifying_token_index"]]
            assert activation["dfa_head_totals"][1 - owner] == 0.0  # the other head: nothing
            if value > 0:
                fired += 1
                pre = sum(activation["dfa_head_totals"]) + activation["dfa_bias"]
                assert pre == pytest.approx(value, abs=5e-3)
        top = max(a["values"][a["qualifying_token_index"]] for a in shown)
        assert top == pytest.approx(acts[:, 1:, index].max().item(), abs=2e-3)
    assert fired >= 5
