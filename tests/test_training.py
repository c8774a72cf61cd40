"""Training on hook_z through SAELens's runner: architectures, folding, evals, cache, configs."""

import copy
import json

import pytest
import torch
from sae_lens import (
    SAE,
    HookedSAETransformer,
    LanguageModelSAERunnerConfig,
    LoggingConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)
from sae_lens.llm_sae_training_runner import LLMSaeEvaluator
from sae_lens.training.activation_scaler import ActivationScaler

import sae_lens_attn.training.runner as runner_module
from sae_lens_attn.architectures.block_diagonal import (
    BlockDiagonalTrainingSAE,
    BlockDiagonalTrainingSAEConfig,
)
from sae_lens_attn.sources import HookZSource, cache_hook_z_activations
from sae_lens_attn.sources.head_layout import HeadLayout
from sae_lens_attn.sources.tokens import as_token_dataset
from sae_lens_attn.training import (
    HookZTrainingRunner,
    block_diagonal_config_for,
    evaluate_hook_z_sae,
    fold_input_scale,
    sae_config_for,
    train_hook_z_sae,
)

SMALL_RUN = dict(training_tokens=4096, train_batch_size_tokens=128, store_batch_size_prompts=4, expansion_factor=2)


@pytest.fixture(scope="module")
def train_tokens():
    return torch.randint(0, 101, (32, 32), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    ("architecture", "sae_kwargs", "sae_class"),
    [
        ("standard", {"l1_coefficient": 1.0}, "StandardSAE"),
        ("block_diagonal", {"l1_coefficient": 1.0}, "BlockDiagonalSAE"),
        ("topk", {"k": 8}, "TopKSAE"),
    ],
)
def test_runner_trains_each_architecture_and_the_sae_splices_into_hooked_sae_transformer(
    tiny_model, tiny_tokens, train_tokens, tmp_path, architecture, sae_kwargs, sae_class
):
    sae, layout = train_hook_z_sae(
        tiny_model, 1, architecture=architecture, dataset=train_tokens, sae_kwargs=sae_kwargs,
        output_path=tmp_path, **SMALL_RUN,
    )
    assert type(sae).__name__ == sae_class
    assert (tmp_path / "cfg.json").is_file() and (tmp_path / "sparsity.safetensors").is_file()
    assert layout == HeadLayout.for_model(tiny_model, 1) == HeadLayout.from_sae(sae, tiny_model)
    assert sae.cfg.metadata.hook_name == "blocks.1.attn.hook_z"
    assert sae.cfg.metadata.l0 > 0  # recorded by SAELens's trainer
    assert sae.cfg.reshape_activations == "hook_z"
    # spliced in by HookedSAETransformer == replacing hook_z by the SAE's reconstruction by hand
    spliced_model = HookedSAETransformer(tiny_model.cfg)
    spliced_model.load_state_dict(tiny_model.state_dict())
    spliced = spliced_model.run_with_saes(tiny_tokens, saes=[sae])

    def reconstruct(z, hook):
        return sae.decode(sae.encode(z.flatten(-2).contiguous().view(*z.shape[:2], -1))).view(z.shape)

    sae.turn_off_forward_pass_hook_z_reshaping()
    by_hand = tiny_model.run_with_hooks(tiny_tokens, fwd_hooks=[(layout.hook_name, reconstruct)])
    torch.testing.assert_close(spliced, by_hand)
    assert not torch.allclose(spliced, tiny_model(tiny_tokens))


def perturbed(sae):
    """Random biases too, so folding is tested on every parameter."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return sae


@pytest.mark.parametrize(
    "make_sae",
    [
        lambda: StandardTrainingSAE(StandardTrainingSAEConfig(d_in=32, d_sae=64)),
        lambda: TopKTrainingSAE(TopKTrainingSAEConfig(d_in=32, d_sae=64, k=5, rescale_acts_by_decoder_norm=True)),
        lambda: BlockDiagonalTrainingSAE(BlockDiagonalTrainingSAEConfig(d_in=32, d_sae=64, n_heads=2)),
    ],
    ids=["standard", "topk", "block_diagonal"],
)
def test_folded_sae_on_raw_input_equals_unfolded_sae_on_scaled_input(make_sae):
    torch.manual_seed(0)
    sae = perturbed(make_sae())
    scale = torch.tensor([2.0] * 16 + [0.25] * 16)
    x = torch.randn(50, 32)
    features_scaled, recon_scaled = sae.encode(x * scale), sae.decode(sae.encode(x * scale))
    folded = copy.deepcopy(sae)
    fold_input_scale(folded, scale)
    torch.testing.assert_close(folded.encode(x), features_scaled, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(folded.decode(folded.encode(x)), recon_scaled / scale, rtol=1e-4, atol=1e-5)


def test_per_head_norm_run_saves_an_sae_that_takes_raw_hook_z(tiny_model, train_tokens, tmp_path, monkeypatch):
    before_fold = []
    fold = runner_module.fold_input_scale
    monkeypatch.setattr(
        runner_module, "fold_input_scale",
        lambda sae, scale: (before_fold.append((copy.deepcopy(sae), scale)), fold(sae, scale)),
    )
    sae, layout = train_hook_z_sae(
        tiny_model, 1, heads=[3, 1], architecture="block_diagonal", dataset=train_tokens,
        per_head_norm=True, output_path=tmp_path, **SMALL_RUN,
    )
    [(unfolded, scale)] = before_fold
    assert sae.cfg.reshape_activations == "none"  # a head subset is not the whole hook_z
    assert sae.cfg.metadata["head_layout"]["heads"] == [3, 1]
    per_head = torch.tensor(sae.cfg.metadata["per_head_scale_folded"])
    torch.testing.assert_close(scale, per_head.repeat_interleave(16))
    raw = HookZSource(tiny_model, 1, heads=[3, 1]).activations(train_tokens[:4]).flatten(0, 1)
    # the estimated scale brings each head near mean norm sqrt(d_head) = 4
    assert ((layout.split(raw * scale).norm(dim=-1).mean(0) - 4).abs() < 1).all()
    torch.testing.assert_close(sae.encode(raw), unfolded.encode(raw * scale), rtol=1e-4, atol=1e-4)


def small_runner(model, source, tokens, **overrides):
    cfg = LanguageModelSAERunnerConfig(
        **{
            "sae": StandardTrainingSAEConfig(d_in=source.d_in, d_sae=2 * source.d_in),
            "hook_name": source.hook_name, "context_size": 32, "training_tokens": 2048,
            "train_batch_size_tokens": 128, "store_batch_size_prompts": 4, "n_batches_in_buffer": 8,
            "n_eval_batches": 2, "logger": LoggingConfig(log_to_wandb=False),
            "checkpoint_path": None, "output_path": None, "verbose": False,
            **overrides,
        }
    )
    return HookZTrainingRunner(cfg, source, override_dataset=as_token_dataset(tokens))


def test_in_training_evals_scale_raw_hook_z_like_the_training_batches(tiny_model, train_tokens):
    torch.manual_seed(0)
    source = HookZSource(tiny_model, 1, per_head_norm=True)
    runner = small_runner(tiny_model, source, train_tokens)
    sae = perturbed(runner.sae)
    sae.cfg.metadata.hook_name = source.hook_name
    # reference: the same SAE folded to raw input, through SAELens's own evaluator
    folded = copy.deepcopy(sae)
    fold_input_scale(folded, source.input_scale)
    store = runner.activations_store
    store.iterable_sequences = store._iterate_tokenized_sequences()  # from the first prompt
    ours = runner.evaluator(sae, store, ActivationScaler())
    store.iterable_sequences = store._iterate_tokenized_sequences()  # the same prompts again
    saelens_evaluator = LLMSaeEvaluator(
        model=tiny_model, activations_store=store, eval_batch_size_prompts=None, n_eval_batches=2,
        model_kwargs={},
    )
    reference = saelens_evaluator(folded, store, ActivationScaler())
    for group, name in [("model_performance_preservation", "ce_loss_with_sae"),
                        ("reconstruction_quality", "mse"), ("shrinkage", "l2_ratio"), ("sparsity", "l0")]:
        assert ours[group][name] == pytest.approx(reference[group][name], rel=1e-4), name


def test_evals_refuse_head_subsets_instead_of_measuring_the_wrong_thing(tiny_model, train_tokens):
    runner = small_runner(tiny_model, HookZSource(tiny_model, 1, heads=[0]), train_tokens)
    with pytest.warns(UserWarning, match=r"reads heads \[0\] only"):
        assert runner.evaluator(runner.sae, runner.activations_store, ActivationScaler()) == {}
    runner.sae.cfg.metadata.hook_name = "blocks.1.attn.hook_z"
    HeadLayout.for_model(tiny_model, 1, [0]).store_in(runner.sae)
    with pytest.raises(ValueError, match=r"all 4 heads of blocks.1.attn.hook_z; this SAE reads heads \[0\]"):
        evaluate_hook_z_sae(runner.sae, tiny_model, train_tokens)


def test_evaluate_hook_z_sae_reports_saelens_metrics(tiny_model, train_tokens, tmp_path):
    sae, _ = train_hook_z_sae(tiny_model, 0, architecture="standard", dataset=train_tokens, **SMALL_RUN)
    metrics = evaluate_hook_z_sae(sae, tiny_model, train_tokens, n_batches=2, batch_size_prompts=4)
    # independent reference for l0: count active features on the same prompts (SAELens's
    # reset_input_dataset does not rewind the token stream: the sparsity evals read rows 8..15)
    _, cache = tiny_model.run_with_cache(train_tokens[8:16])
    z = cache["blocks.0.attn.hook_z"]  # [batch, pos, n_heads, d_head]: the SAE reshapes hook_z itself
    assert metrics["l0"] == pytest.approx((sae.encode(z) > 0).float().sum(-1).mean().item(), rel=1e-5)
    assert metrics["ce_loss_without_sae"] == pytest.approx(tiny_model(train_tokens[:8], return_type="loss").item(), rel=1e-4)
    assert {"explained_variance", "mse", "ce_loss_score", "ce_loss_with_ablation"} <= set(metrics)


@pytest.mark.parametrize(
    ("make_source", "kwargs", "message"),
    [
        (lambda m: HookZSource(m, 1, per_head_norm=True),
         {"sae": StandardTrainingSAEConfig(d_in=64, d_sae=128, normalize_activations="layer_norm")},
         "per_head_norm cannot be combined with normalize_activations='layer_norm'"),
        (lambda m: HookZSource(m, 1, heads=[1, 2]), {}, r"sae.d_in=64 does not match the source"),
        (lambda m: HookZSource(m, 1), {"compile_llm": True}, "set compile_llm=False"),
    ],
)
def test_runner_refuses_settings_it_cannot_honour(tiny_model, train_tokens, make_source, kwargs, message):
    source = make_source(tiny_model)
    overrides = {"sae": StandardTrainingSAEConfig(d_in=64, d_sae=128), **kwargs}
    with pytest.raises(ValueError, match=message):
        small_runner(tiny_model, source, train_tokens, **overrides)


def test_cached_activations_keep_their_heads_and_train_like_live_ones(tiny_model, train_tokens, tmp_path):
    source = HookZSource(tiny_model, 1, heads=[2, 0])
    cache = cache_hook_z_activations(source, train_tokens, tmp_path / "cache", batch_size_prompts=4, shuffle=False)
    cache.set_format("torch")
    assert len(cache) == 32
    torch.testing.assert_close(cache[source.hook_name][:4], source.activations(train_tokens[:4]))
    stored = json.loads((tmp_path / "cache" / "hook_z_source.json").read_text())
    assert HeadLayout.from_dict(stored["head_layout"]) == source.layout
    assert stored["per_head_scale"] is None  # caches are raw
    cached = {"use_cached_activations": True, "cached_activations_path": str(tmp_path / "cache")}
    normalising = HookZSource(tiny_model, 1, heads=[2, 0], per_head_norm=True)
    runner = small_runner(tiny_model, normalising, train_tokens, **cached)
    # the scale was estimated from 8 batches of 4 rows, all 32 cached rows: the store wraps around
    batch, _ = runner.activations_store.get_raw_llm_batch()
    expected = source.activations(train_tokens[:4]).flatten(0, 1) * normalising.input_scale
    torch.testing.assert_close(batch, expected)
    assert runner.run().cfg.metadata["head_layout"]["heads"] == [2, 0]
    with pytest.raises(ValueError, match=r"holds blocks.1.attn.hook_z heads \[2, 0\]"):
        small_runner(tiny_model, HookZSource(tiny_model, 1, heads=[0, 2]), train_tokens, **cached)
    with pytest.raises(ValueError, match="a cache holds raw activations"):
        cache_hook_z_activations(normalising, train_tokens, tmp_path / "other")


def test_block_diagonal_config_for_takes_heads_and_sizes_from_the_layout(tiny_model):
    source = HookZSource(tiny_model, 1, heads=[3, 1, 2])
    cfg = block_diagonal_config_for(source, expansion_factor=4, l1_coefficient=2.0)
    assert isinstance(cfg, BlockDiagonalTrainingSAEConfig)
    assert (cfg.d_in, cfg.d_sae, cfg.n_heads, cfg.d_head, cfg.l1_coefficient) == (48, 192, 3, 16, 2.0)
    assert cfg.reshape_activations == "none"  # three of four heads
    all_heads = block_diagonal_config_for(HeadLayout.for_model(tiny_model, 0), d_sae=128)
    assert (all_heads.d_in, all_heads.d_sae, all_heads.n_heads, all_heads.reshape_activations) == (64, 128, 4, "hook_z")
    assert sae_config_for(source, "topk", k=3).k == 3
    with pytest.raises(ValueError, match=r"has no field\(s\) \['k_per_head'\]"):
        block_diagonal_config_for(source, k_per_head=2)
    with pytest.raises(ValueError, match="unknown architecture 'dense'; SAELens knows"):
        sae_config_for(source, "dense")


def test_saved_sae_loads_with_its_layout(tiny_model, train_tokens, tmp_path):
    train_hook_z_sae(tiny_model, 1, heads=[1], architecture="topk", dataset=train_tokens,
                     sae_kwargs={"k": 2}, output_path=tmp_path, **SMALL_RUN)
    loaded = SAE.load_from_disk(tmp_path)
    assert HeadLayout.from_sae(loaded, tiny_model) == HeadLayout.for_model(tiny_model, 1, [1])


def test_checkpoints_keep_the_per_head_scale_for_resuming(tiny_model, train_tokens, tmp_path):
    source = HookZSource(tiny_model, 1, heads=[1, 3], per_head_norm=True)
    runner = small_runner(tiny_model, source, train_tokens, checkpoint_path=str(tmp_path), n_checkpoints=1)
    runner.run()
    [checkpoint] = [p for p in tmp_path.rglob("hook_z_source.json")]
    assert json.loads(checkpoint.read_text())["per_head_scale"] == source.per_head_scale.tolist()
    resumed = HookZSource(tiny_model, 1, heads=[1, 3], per_head_norm=True)
    other_tokens = torch.randint(0, 101, (32, 32), generator=torch.Generator().manual_seed(5))
    small_runner(tiny_model, resumed, other_tokens, resume_from_checkpoint=str(checkpoint.parent))
    # taken from the checkpoint, not re-estimated from other data
    torch.testing.assert_close(resumed.per_head_scale, source.per_head_scale, rtol=0, atol=0)
    fresh = HookZSource(tiny_model, 1, heads=[1, 3], per_head_norm=True)
    small_runner(tiny_model, fresh, other_tokens)
    assert not torch.allclose(fresh.per_head_scale, source.per_head_scale)


def test_dead_feature_window_counts_training_tokens_in_whole_batches():
    from sae_lens_attn.dead import DEAD_WINDOW_TOKENS
    from sae_lens_attn.training.train import dead_feature_window, runner_options

    assert [dead_feature_window(tokens, 4096) for tokens in (1, 4096, 4097, 16_384)] == [1, 1, 2, 4]
    assert runner_options(128, 4096, {})["dead_feature_window"] == dead_feature_window(DEAD_WINDOW_TOKENS, 4096)
    assert runner_options(128, 4096, {"dead_feature_window": 7})["dead_feature_window"] == 7
