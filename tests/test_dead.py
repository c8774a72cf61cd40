"""One meaning of "dead": never fired on N held-out tokens, counted once and printed with N
everywhere; too small a sample says "not seen in N tokens"."""

import json
import re

import pytest
import torch
from sae_lens import SAE

from sae_lens_attn.attribution.firing import count_firings
from sae_lens_attn.cli import main
from sae_lens_attn.dead import DEAD_TOKENS, dead_features, silent_label
from sae_lens_attn.sources.head_layout import HeadLayout
from sae_lens_attn.sources.hook_z import HookZSource
from tests.test_training_cli import REDUCED, tiny_embedded  # noqa: F401 (a fixture)


def test_the_count_is_the_features_that_never_fired_and_names_n():
    counts = torch.tensor([0, 3, 0, 1, 0, 7])
    many = dead_features(counts, DEAD_TOKENS)
    assert many.count == 3 and many.share == pytest.approx(0.5) and many.conclusive
    assert many.describe() == f"dead (never fired in {DEAD_TOKENS:,} tokens): 3 of 6 features (50.0%)"
    assert many.metrics() == {"dead_eval_tokens": DEAD_TOKENS, "not_seen_features": 3, "not_seen_share": 0.5,
                              "dead_features": 3, "dead_share": 0.5}
    owner = torch.tensor([0, 0, 0, 1, 1, 1])
    assert many.per_head_share(owner, 3).tolist() == [2 / 3, 1 / 3, 0.0]


def test_a_small_sample_says_not_seen_instead_of_dead():
    few = dead_features(torch.tensor([0, 1, 0, 0]), 4096)
    assert not few.conclusive and few.label == "not seen in 4,096 tokens"
    assert few.describe().startswith("not seen in 4,096 tokens: 3 of 4 features (75.0%); too few tokens")
    assert "dead" not in few.describe().split(";")[0]
    assert "dead_features" not in few.metrics() and few.metrics()["not_seen_features"] == 3
    assert silent_label(DEAD_TOKENS - 1).startswith("not seen") and silent_label(DEAD_TOKENS).startswith("dead")


def test_count_firings_equals_a_hand_count(tiny_model, saved_sae_dir):
    sae = SAE.load_from_disk(saved_sae_dir)
    layout = HeadLayout.from_sae(sae, tiny_model)
    tokens = torch.randint(0, 101, (10, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        sae.b_enc.data[:3] = -1e3  # three features that cannot fire
        x = HookZSource(tiny_model, layout.layer, layout.heads).activations(tokens)
        reshaping = getattr(sae, "hook_z_reshaping_mode", False)
        acts = sae.encode(layout.split(x) if reshaping else x).flatten(0, -2)
    hand = (acts != 0).sum(0)
    dead = count_firings(tiny_model, sae, layout, tokens, batch_size=3)
    assert dead.n_tokens == 120 and torch.equal(dead.fire_counts, hand)
    assert dead.count == int((hand == 0).sum()) >= 3


@pytest.mark.usefixtures("tiny_embedded")
def test_the_same_sae_gives_the_same_count_in_every_output(tiny_model, tmp_path, capsys):
    out = tmp_path / "dead"
    assert main(["train", "--layer", "1", "--k", "1", "--eval-batches", "1", "--out", str(out), *REDUCED,
                 "--dead-tokens", "1024"]) == 0
    printed = capsys.readouterr().out
    [summary] = re.findall(r"not seen in 1,024 tokens: (\d+) of (\d+) features", printed)
    [entry] = json.loads((out / "saes.json").read_text())
    head_evals = json.loads((out / "head_evals.json").read_text())
    per_head = sum(round(v["dead_share"] * v["features"]) for v in head_evals.values())
    assert int(summary[0]) == entry["metrics"]["not_seen_features"] == per_head
    assert entry["metrics"]["dead_eval_tokens"] == 1024 and "dead_features" not in entry["metrics"]
    assert {v["dead_tokens"] for v in head_evals.values()} == {1024}
    assert "not seen in 1,024 tok" in printed  # the per-head table's column
    assert "dead features" not in printed  # SAELens's window count is not printed as "dead"
    sae = SAE.load_from_disk(out)
    from tests.test_training_cli import train_command  # the fixture's corpus, as train read it

    rows = torch.tensor(train_command._corpus_rows(16, 64, "test")["input_ids"])
    independent = count_firings(tiny_model, sae, HeadLayout.from_sae(sae, tiny_model), rows)
    assert independent.count == int(summary[0])
