"""The embedded model: corpus split, tokenizer, shipped weights, induction heads, loaders."""

from __future__ import annotations

import pytest
import torch

from sae_lens_attn.models import (
    EMBEDDED_DIR,
    corpus_dataset,
    induction_scores,
    load_embedded_model,
    load_embedded_tokenizer,
    load_model,
    read_embedded_config,
)
from sae_lens_attn.models.corpus import corpus_files, stdlib_dir
from sae_lens_attn.models.dataset import corpus_tokens
from sae_lens_attn.models.induction import repeated_random_tokens
from sae_lens_attn.models.tokenizer import save_tokenizer, train_bpe_tokenizer


@pytest.fixture(scope="module")
def embedded():
    return load_embedded_model()


def test_corpus_splits_are_disjoint_and_cover_the_stdlib():
    train, test = corpus_files("train"), corpus_files("test")
    assert train and test
    assert not set(train) & set(test)
    every = {p for p in stdlib_dir().rglob("*.py") if "site-packages" not in p.parts}
    assert set(train) | set(test) == every
    assert 0.02 < len(test) / len(every) < 0.08  # one file in 20, by path hash


def test_corpus_order_does_not_depend_on_the_filesystem(tmp_path):
    for name in ("b.py", "a.py", "pkg/c.py", "site-packages/skip.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"# {name}\n")
    files = corpus_files("train", tmp_path) + corpus_files("test", tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in files) == ["a.py", "b.py", "pkg/c.py"]
    assert corpus_files("train", tmp_path) == corpus_files("train", tmp_path)
    with pytest.raises(ValueError, match="expected one of"):
        corpus_files("validation", tmp_path)


def test_a_locally_trained_tokenizer_round_trips_code_and_keeps_bos_first(tmp_path):
    from sae_lens_attn.models.tokenizer import load_tokenizer

    texts = ["def f(x):\n    return x + 1\n", "class A:\n    pass\n"] * 20
    folder = save_tokenizer(train_bpe_tokenizer(texts, 300), tmp_path / "tok", 64)
    tokenizer = load_tokenizer(folder)
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == 0
    text = "def g(y):\n\treturn 'é' * y\n"  # characters never seen in training: byte fallback
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_embedded_tokenizer_round_trips_held_out_source():
    tokenizer = load_embedded_tokenizer()
    text = corpus_files("test")[0].read_text(encoding="utf-8", errors="replace")[:2000]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text) / 2  # BPE merges: at least two characters per token
    assert len(tokenizer.vocab) == read_embedded_config()["model"]["d_vocab"]


def test_corpus_dataset_rows_start_with_bos_and_splits_differ():
    train = corpus_dataset(32, n_sequences=4)
    test = corpus_dataset(32, n_sequences=4, split="test")
    assert train.column_names == ["input_ids"]
    rows = torch.tensor(train["input_ids"])
    assert rows.shape == (4, 32) and (rows[:, 0] == 0).all()
    assert not torch.equal(rows, torch.tensor(test["input_ids"]))
    assert torch.equal(rows, torch.tensor(corpus_dataset(32, n_sequences=4)["input_ids"]))


def test_corpus_tokens_refuses_more_rows_than_the_split_has(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="has only"):
        corpus_tokens(load_embedded_tokenizer(), 8, 1000, "train", root=tmp_path)


def test_embedded_model_is_small_and_ships_its_record():
    size = sum(p.stat().st_size for p in EMBEDDED_DIR.rglob("*") if p.is_file())
    assert size < 20e6
    config = read_embedded_config()
    assert config["model"]["n_layers"] == 2 and config["model"]["d_mlp"]
    assert (EMBEDDED_DIR / "training_log.csv").is_file()


def test_embedded_model_decodes_tokens_and_reproduces_its_recorded_test_loss(embedded):
    assert embedded.to_string(embedded.to_tokens("import os\n", prepend_bos=False)[0]) == "import os\n"
    config = read_embedded_config()
    context = config["training"]["n_ctx"]
    tokens = corpus_tokens(embedded.tokenizer, context, config["training"]["eval_sequences"], "test")
    with torch.no_grad():
        losses = [embedded(chunk, return_type="loss").item() for chunk in tokens.split(config["training"]["batch_size"])]
    assert sum(losses) / len(losses) == pytest.approx(config["measurements"]["test_loss"], abs=2e-3)


def test_embedded_model_has_an_induction_head_in_layer_1(embedded):
    scores = induction_scores(embedded, batch=8, half_length=40, seed=5)
    assert scores.shape == (2, embedded.cfg.n_heads)
    assert scores[1].max() > 0.5
    assert scores[0].max() < 0.3  # layer 0 cannot do induction on its own


def test_induction_score_matches_a_direct_loop_over_the_pattern(embedded):
    tokens = repeated_random_tokens(2, 10, embedded.cfg.d_vocab, 0, seed=3)
    _, cache = embedded.run_with_cache(tokens)
    expected = torch.zeros(2, embedded.cfg.n_heads)
    for layer in range(2):
        pattern = cache["pattern", layer]
        for head in range(embedded.cfg.n_heads):
            values = [pattern[b, head, q, q - 9] for b in range(2) for q in range(11, 21)]
            expected[layer, head] = torch.stack(values).mean()
    assert torch.allclose(induction_scores(embedded, batch=2, half_length=10, seed=3), expected)


def test_repeated_random_tokens_never_draw_bos():
    tokens = repeated_random_tokens(64, 50, 7, bos_token_id=3, seed=0)
    assert (tokens[:, 0] == 3).all() and not (tokens[:, 1:] == 3).any()
    assert torch.equal(tokens[:, 1:51], tokens[:, 51:])
    assert set(tokens[:, 1:].unique().tolist()) == {0, 1, 2, 4, 5, 6}


def test_hub_model_offline_fails_with_a_message_naming_the_embedded_default(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="--model embedded"):
        load_model("gelu-2l")


def test_unknown_model_name_is_a_value_error():
    with pytest.raises(ValueError, match="gpt2"):
        load_model("not-a-model-name")


def test_curriculum_rows_repeat_segments_of_varying_length_and_never_draw_bos():
    from sae_lens_attn.models.train import SegmentDrawer, mix_in_repeated_segments

    corpus = torch.arange(1, 1 + 50 * 64).reshape(50, 64) % 97 + 1  # never 0 (BOS)
    corpus[:, 0] = 0
    generator = torch.Generator().manual_seed(0)
    offsets = set()
    for source in ("random", "corpus"):
        draw = SegmentDrawer(corpus, source, pool=0, bos=0, d_vocab=100)
        batch = mix_in_repeated_segments(corpus[:32], 1.0, draw, 0, generator)
        assert batch.shape == (32, 64) and (batch[:, 0] == 0).all() and (batch[:, 1:] != 0).all()
        for row in batch.tolist():
            # every segment of length >= 4 reappears: find the offset of its repeat
            for offset in range(4, 60):
                if row[1:1 + 4] == row[1 + offset:1 + offset + 4]:
                    offsets.add(offset)
                    break
    assert len(offsets) > 5  # no fixed offset predicts the repeat
    with pytest.raises(ValueError, match="random"):
        SegmentDrawer(corpus, "wikipedia", 0, 0, 100)


def test_random_segments_from_a_pool_use_the_most_frequent_tokens():
    from sae_lens_attn.models.train import SegmentDrawer

    corpus = torch.tensor([[0, 5, 5, 5, 7, 7, 9, 0]])
    draw = SegmentDrawer(corpus, "random", pool=2, bos=0, d_vocab=10)
    assert set(draw(200, torch.Generator().manual_seed(0))) == {5, 7}


def test_planted_previous_token_head_attends_to_the_previous_position():
    from transformer_lens import HookedTransformer

    from sae_lens_attn.models.embedded import build_model_config
    from sae_lens_attn.models.induction import previous_token_scores
    from sae_lens_attn.models.train import model_arguments, parse_args, plant_previous_token_head

    args = parse_args(["--out", "x", "--positional-embedding", "rotary", "--n-heads", "4",
                       "--d-head", "32", "--vocab-size", "200"])
    model = HookedTransformer(build_model_config(model_arguments(args)), move_to_device=False)
    before = previous_token_scores(model, batch=4, half_length=20)[0]
    plant_previous_token_head(model, 0, 5.0)
    after = previous_token_scores(model, batch=4, half_length=20)[0]
    assert after[0] > 0.4 > before.max()
    assert torch.equal(after[1:], before[1:])  # other heads untouched
    args.positional_embedding = "standard"
    standard = HookedTransformer(build_model_config(model_arguments(args)), move_to_device=False)
    with pytest.raises(ValueError, match="rotary"):
        plant_previous_token_head(standard, 0, 5.0)


def test_training_script_defaults_are_the_shipped_models_recipe():
    from sae_lens_attn.models.train import parse_args

    defaults = vars(parse_args(["--out", "x"]))
    del defaults["out"]
    assert defaults == read_embedded_config()["training"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--repeat-fraction", "1.5"], "--repeat-fraction must be between 0 and 1, got 1.5"),
        (["--repeat-pool", "-3"], "--repeat-pool must be 0 (whole vocabulary) or a positive count"),
        (["--positional-embedding", "standard"], "--plant-previous-token-head needs --positional-embedding rotary"),
    ],
)
def test_training_script_rejects_bad_arguments_before_any_work(arguments, message, capsys):
    from sae_lens_attn.models.train import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--out", "x", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
