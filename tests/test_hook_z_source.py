"""HookZSource and HookZActivationsStore: activations, stop-early, GQA, validation, scaling."""

import math

import pytest
import torch
from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig, StandardTrainingSAEConfig
from sae_lens.training.activations_store import ActivationsStore
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_lens_attn._upstream import disable_datasets_torchvision_formatting
from sae_lens_attn.plugins import get_plugin_manager
from sae_lens_attn.sources import HookZActivationsStore, HookZSource
from sae_lens_attn.sources.tokens import as_token_dataset


def cached_hook_z(model, tokens, layer):
    _, cache = model.run_with_cache(tokens)
    return cache[f"blocks.{layer}.attn.hook_z"]  # [batch, pos, n_heads, d_head]


@pytest.mark.parametrize("layer", [0, 1])
def test_activations_equal_run_with_cache_rearranged_for_all_heads(tiny_model, tiny_tokens, layer):
    z = cached_hook_z(tiny_model, tiny_tokens, layer)
    x = HookZSource(tiny_model, layer).activations(tiny_tokens)
    torch.testing.assert_close(x, z.flatten(-2), rtol=0, atol=0)
    assert x.shape == (8, 32, 4 * 16)


def test_activations_for_a_head_subset_follow_the_given_order(tiny_model, tiny_tokens):
    z = cached_hook_z(tiny_model, tiny_tokens, 1)
    source = HookZSource(tiny_model, 1, heads=[2, 0, 3])
    x = source.activations(tiny_tokens)
    assert source.d_in == 48
    torch.testing.assert_close(x, torch.cat([z[:, :, 2], z[:, :, 0], z[:, :, 3]], dim=-1), rtol=0, atol=0)
    for position, head in enumerate(source.layout.heads):
        torch.testing.assert_close(x[..., source.layout.head_slice(position)], z[:, :, head])


def test_forward_pass_stops_right_after_the_hooked_hook_z(tiny_model, tiny_tokens):
    called = []
    later_hooks = [
        "blocks.0.hook_attn_out",  # W_O of the hooked layer
        "blocks.0.hook_mlp_out",  # its MLP
        "blocks.1.attn.hook_pattern",  # the last layer's attention
        "blocks.1.attn.hook_z",
    ]
    hooks = [(name, lambda act, hook: called.append(hook.name)) for name in later_hooks]
    with tiny_model.hooks(fwd_hooks=hooks):
        HookZSource(tiny_model, 0).activations(tiny_tokens)
    assert called == []
    # the source's own hook is gone afterwards, and a normal forward still runs every hook
    assert all(not tiny_model.hook_dict[name]._forward_hooks for name in tiny_model.hook_dict)
    with tiny_model.hooks(fwd_hooks=hooks):
        tiny_model(tiny_tokens)
    assert called == later_hooks


def test_grouped_query_attention_gives_per_query_head_activations(tiny_tokens):
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=64, n_heads=4, n_key_value_heads=2, d_head=16, d_mlp=256,
        d_vocab=101, n_ctx=64, act_fn="gelu", normalization_type="LN", seed=1, device="cpu",
    )
    model = HookedTransformer(cfg).eval()
    z = cached_hook_z(model, tiny_tokens, 1)
    assert z.shape[-2:] == (4, 16)
    x = HookZSource(model, 1, heads=[3, 1]).activations(tiny_tokens)
    torch.testing.assert_close(x, torch.cat([z[:, :, 3], z[:, :, 1]], dim=-1), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("hook_name", "heads", "message"),
    [
        ("blocks.1.hook_resid_post", None, "expected one of blocks.0.attn.hook_z .. blocks.1.attn.hook_z"),
        ("blocks.1.attn.hook_q", None, "not an attention z hook"),
        ("blocks.2.attn.hook_z", None, "layer 2 is out of range; expected one of blocks.0.attn.hook_z"),
        ("blocks.1.attn.hook_z", [0, 4], "head index 4 is out of range for layer 1; valid heads are 0..3"),
    ],
)
def test_bad_hooks_and_heads_are_value_errors_naming_the_valid_choices(tiny_model, hook_name, heads, message):
    with pytest.raises(ValueError, match=message):
        HookZSource.from_hook_name(tiny_model, hook_name, heads)


def test_per_head_norm_scales_every_head_to_mean_norm_sqrt_d_head(tiny_model, tiny_tokens):
    source = HookZSource(tiny_model, 1, heads=[3, 1], per_head_norm=True)
    raw = source.activations(tiny_tokens)
    with pytest.raises(RuntimeError, match="estimate_per_head_scale"):
        source.normalize(raw)
    scale = source.estimate_per_head_scale(raw)
    scaled = source.layout.split(source.normalize(raw))  # [batch, pos, 2, d_head]
    torch.testing.assert_close(scaled.norm(dim=-1).mean(dim=(0, 1)), torch.full((2,), 4.0))
    # the scale is the closed form sqrt(d_head) / mean ||z_h||, head by head
    z = cached_hook_z(tiny_model, tiny_tokens, 1)
    torch.testing.assert_close(scale, 4.0 / z[:, :, [3, 1]].norm(dim=-1).mean(dim=(0, 1)))


def test_iter_batches_yields_token_batches_in_order(tiny_model, tiny_tokens):
    source = HookZSource(tiny_model, 0, heads=[1])
    batches = list(source.iter_batches(tiny_tokens, batch_size_prompts=3))
    assert [b.shape for b in batches] == [(96, 16), (96, 16), (64, 16)]
    torch.testing.assert_close(torch.cat(batches), source.activations(tiny_tokens).flatten(0, 1))


def runner_config(source, **overrides):
    options = dict(
        sae=StandardTrainingSAEConfig(d_in=source.d_in, d_sae=2 * source.d_in),
        hook_name=source.hook_name, context_size=32, training_tokens=4096,
        train_batch_size_tokens=128, store_batch_size_prompts=4, n_batches_in_buffer=8,
        logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=None,
        verbose=False,
    )
    return LanguageModelSAERunnerConfig(**{**options, **overrides})


@pytest.mark.parametrize("seqpos_slice", [(None,), (2, -3)])
def test_store_gives_what_saelens_own_store_gives_for_all_heads(tiny_model, tiny_tokens, seqpos_slice):
    disable_datasets_torchvision_formatting()
    source = HookZSource(tiny_model, 1)
    cfg = runner_config(source, seqpos_slice=seqpos_slice)
    ours = HookZActivationsStore.from_source(source, cfg, as_token_dataset(tiny_tokens))
    theirs = ActivationsStore.from_config(tiny_model, cfg, override_dataset=as_token_dataset(tiny_tokens))
    tokens = ours.get_batch_tokens()
    assert torch.equal(tokens, theirs.get_batch_tokens())
    torch.testing.assert_close(ours.get_activations(tokens), theirs.get_activations(tokens), rtol=0, atol=0)
    raw_ours, tokens_ours = ours.get_raw_llm_batch()
    raw_theirs, tokens_theirs = theirs.get_raw_llm_batch()
    torch.testing.assert_close(raw_ours, raw_theirs, rtol=0, atol=0)
    assert torch.equal(tokens_ours, tokens_theirs)


def test_store_batches_are_per_head_normalised(tiny_model, tiny_tokens):
    source = HookZSource(tiny_model, 1, heads=[0, 2], per_head_norm=True)
    store = HookZActivationsStore.from_source(source, runner_config(source), as_token_dataset(tiny_tokens))
    store.estimate_per_head_scale(n_batches=2)  # the first 8 prompts
    batch, _ = store.get_raw_llm_batch()  # prompts 8.. wrap around: first 4 again
    reference = cached_hook_z(tiny_model, tiny_tokens[:4], 1)[:, :, [0, 2]].flatten(-2).flatten(0, 1)
    torch.testing.assert_close(batch, reference * source.input_scale)
    assert math.isclose(source.layout.split(batch).norm(dim=-1).mean().item(), 4.0, rel_tol=0.2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hook_name": "blocks.0.attn.hook_z"}, "set hook_name='blocks.1.attn.hook_z'"),
        ({"sae": StandardTrainingSAEConfig(d_in=64, d_sae=128)}, r"heads \[0, 2\] x d_head 16 = 32"),
        ({"hook_head_index": 2}, r"pass heads=\[2\] to the source"),
    ],
)
def test_store_refuses_a_config_that_does_not_match_the_source(tiny_model, tiny_tokens, overrides, message):
    source = HookZSource(tiny_model, 1, heads=[0, 2])
    with pytest.raises(ValueError, match=message):
        HookZActivationsStore.from_source(source, runner_config(source, **overrides), as_token_dataset(tiny_tokens))


def test_source_state_round_trips_and_refuses_other_heads(tiny_model, tiny_tokens, tmp_path):
    source = HookZSource(tiny_model, 1, heads=[2, 0], per_head_norm=True)
    source.estimate_per_head_scale(source.activations(tiny_tokens))
    source.save_state(tmp_path)
    again = HookZSource(tiny_model, 1, heads=[2, 0], per_head_norm=True)
    again.load_state(tmp_path)
    torch.testing.assert_close(again.per_head_scale, source.per_head_scale)
    with pytest.raises(ValueError, match=r"holds blocks.1.attn.hook_z heads \[2, 0\].*reads .* heads \[0, 2\]"):
        HookZSource(tiny_model, 1, heads=[0, 2]).load_state(tmp_path)


def test_hook_z_is_a_registered_activation_source():
    assert get_plugin_manager().get("activation_source", "hook_z") is HookZSource
