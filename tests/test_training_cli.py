"""`sae-lens-attn train` end to end, on a tiny model standing in for the embedded one."""

import pytest
import torch
from datasets import Dataset
from sae_lens import SAE

import sae_lens_attn.commands.train as train_command
import sae_lens_attn.models
from sae_lens_attn.cli import main
from sae_lens_attn.sources.head_layout import HeadLayout

REDUCED = ["--training-tokens", "2048", "--context-size", "16", "--batch-size", "128", "--expansion-factor", "2"]


@pytest.fixture
def tiny_embedded(monkeypatch, tiny_model):
    """`--model embedded` -> the tiny model; its corpus -> random token rows per split."""
    monkeypatch.setattr(train_command, "load_model", lambda name: tiny_model)
    calls = []

    def corpus_dataset(context_size, n_sequences=None, split="train"):
        calls.append(split)
        generator = torch.Generator().manual_seed(0 if split == "train" else 1)
        rows = torch.randint(0, 101, (n_sequences or 200, context_size), generator=generator)
        return Dataset.from_dict({"input_ids": rows.tolist()})

    monkeypatch.setattr(sae_lens_attn.models, "corpus_dataset", corpus_dataset)
    return calls


def test_train_command_saves_a_block_diagonal_sae_on_chosen_heads(tiny_embedded, tiny_model, tmp_path, capsys):
    out = tmp_path / "sae"
    code = main(["train", "--model", "embedded", "--layer", "1", "--heads", "3,0", "--k", "2",
                 "--per-head-norm", "--out", str(out), *REDUCED])
    assert code == 0
    sae = SAE.load_from_disk(out)
    assert type(sae).__name__ == "BlockDiagonalSAE"
    assert (sae.cfg.activation, sae.cfg.k, sae.cfg.n_heads, sae.cfg.d_sae) == ("topk", 2, 2, 64)
    assert HeadLayout.from_sae(sae, tiny_model) == HeadLayout.for_model(tiny_model, 1, [3, 0])
    assert len(sae.cfg.metadata["per_head_scale_folded"]) == 2
    printed = capsys.readouterr().out
    assert f"saved block_diagonal SAE on blocks.1.attn.hook_z heads [3, 0] (d_in 32, d_sae 64) to {out}" in printed
    assert "SAELens evals" not in printed  # not for a head subset
    assert tiny_embedded == ["train"]


def test_train_command_evaluates_an_all_heads_sae_on_held_out_rows(tiny_embedded, tmp_path, capsys):
    assert main(["train", "--layer", "0", "--architecture", "standard", "--l1-coefficient", "2",
                 "--out", str(tmp_path / "sae"), "--eval-batches", "2", *REDUCED]) == 0
    printed = capsys.readouterr().out
    assert "SAELens evals on 2 x 8 held-out prompts:" in printed
    assert "ce_loss_score" in printed and "explained_variance" in printed
    assert tiny_embedded == ["train", "test"]
    assert SAE.load_from_disk(tmp_path / "sae").cfg.metadata.training_architecture_details["l1_coefficient"] == 2.0


def test_train_command_turns_bad_heads_into_an_error_message(tiny_embedded, tmp_path):
    with pytest.raises(SystemExit, match="head index 7 is out of range for layer 1; valid heads are 0..3"):
        main(["train", "--layer", "1", "--heads", "0,7", "--out", str(tmp_path), *REDUCED])
    with pytest.raises(SystemExit, match="needs --dataset"):
        main(["train", "--model", "gpt2-small", "--layer", "1", "--out", str(tmp_path), *REDUCED])
