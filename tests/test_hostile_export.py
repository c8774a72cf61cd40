"""Hostile token text in the Neuronpedia export: markup, quotes, backslashes, JSON and
JavaScript line breakers come back from the batch files exactly as the dashboard shows
them (`models.token_display`), and the files stay strict JSON."""

from __future__ import annotations

import json

import torch
from conftest import make_tiny_model
from test_dashboard import IMG_TOKEN, SCRIPT_TOKEN, random_sae
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from sae_lens_attn.dashboard.neuronpedia import NeuronpediaSettings, export_neuronpedia
from sae_lens_attn.models.token_display import display_token

JSON_TOKEN = '"}]},{"feature_index": -1, "x": "\\'
LINE_TOKEN = "a\u2028b\u2029c</script><!--"
HOSTILE = {7: SCRIPT_TOKEN, 8: IMG_TOKEN, 9: JSON_TOKEN, 10: LINE_TOKEN}


def hostile_model():
    model = make_tiny_model()
    vocab = {f"w{i}": i for i in range(101) if i not in HOSTILE}
    vocab.update({text: i for i, text in HOSTILE.items()})
    model.tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="w0"))
    )
    return model


def test_hostile_tokens_round_trip_through_the_export(tmp_path):
    model = hostile_model()
    tokens = torch.randint(11, 101, (32, 24), generator=torch.Generator().manual_seed(0))
    for position, token in zip((2, 5, 8, 11), HOSTILE, strict=True):
        tokens[:, position] = token
    settings = NeuronpediaSettings(
        model_id="tiny",
        sae_set="hostile",
        batch_size=8,
        top_acts_group_size=4,
        n_quantiles=2,
        quantile_group_size=2,
    )
    sae = random_sae(64, d_sae=4)
    sae.cfg.metadata.hook_name = "blocks.1.attn.hook_z"
    export = export_neuronpedia(model, sae, tokens, tmp_path / "np", settings, features=range(4))
    text = export.batches[0].read_text(encoding="ascii")  # non-ASCII only as \u escapes
    batch = json.loads(text, parse_constant=not_json)
    expected = {display_token(model.tokenizer, i) for i in HOSTILE}
    assert SCRIPT_TOKEN in expected and JSON_TOKEN in expected  # shown as they are
    seen = {
        token
        for feature in batch["features"]
        for activation in feature["activations"]
        for token in activation["tokens"]
    }
    listed = {
        token for feature in batch["features"] for token in feature["pos_str"] + feature["neg_str"]
    }
    assert expected <= seen
    assert listed <= {display_token(model.tokenizer, i) for i in range(101)}
    assert [f["feature_index"] for f in batch["features"]] == [0, 1, 2, 3]


def not_json(name: str):
    raise AssertionError(f"the export wrote {name}, which is not JSON")
