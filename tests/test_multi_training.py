"""Many SAEs from one model pass (`train_hook_z_saes`), against separate single-SAE runs."""

import json

import pytest
import torch
from sae_lens import SAE, StandardTrainingSAEConfig
from sae_lens.multi_sae_training_runner import MultiSAETrainingRunnerConfig

from sae_lens_attn.sources import HookZSource
from sae_lens_attn.sources.head_layout import HeadLayout
from sae_lens_attn.sources.multi_store import stream_key
from sae_lens_attn.sources.tokens import as_token_dataset
from sae_lens_attn.training import HookZSAESpec, train_hook_z_sae, train_hook_z_saes
from sae_lens_attn.training.multi_runner import HookZMultiSAETrainingRunner, multi_runner_config
from sae_lens_attn.training.runner import check_finite_weights
from sae_lens_attn.training.trainer import TrainingDiverged

RUN = dict(training_tokens=2048, train_batch_size_tokens=128, store_batch_size_prompts=4)


@pytest.fixture(scope="module")
def train_tokens():
    return torch.randint(0, 101, (32, 32), generator=torch.Generator().manual_seed(1))


class ForwardCounter:
    """Counts forward passes (hook_embed fires once per pass) and later hooks reached."""

    def __init__(self, model, later_hooks=()):
        self.model, self.later_hooks = model, later_hooks
        self.passes, self.later = 0, []

    def __enter__(self):
        def count(act, hook):
            self.passes += 1

        def later(act, hook):
            self.later.append(hook.name)

        self.model.add_hook("hook_embed", count)
        for name in self.later_hooks:
            self.model.add_hook(name, later)
        return self

    def __exit__(self, *exc):
        self.model.reset_hooks()


def assert_same_weights(sae, reference, name):
    assert sae.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(sae.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=f"{name}.{key}")


def separate_runs(model, specs, tokens):
    """Each spec trained alone with train_hook_z_sae; returns ({name: sae}, forward passes)."""
    saes = {}
    with ForwardCounter(model) as counter:
        for spec in specs:
            saes[spec.sae_name], _ = train_hook_z_sae(
                model, spec.layer, spec.heads, spec.architecture, dataset=tokens,
                expansion_factor=spec.expansion_factor, sae_kwargs=dict(spec.sae_kwargs),
                per_head_norm=spec.per_head_norm, **RUN,
            )
    return saes, counter.passes


def test_one_pass_training_of_two_layers_by_two_architectures_equals_four_separate_runs(
    tiny_model, train_tokens, tmp_path
):
    specs = [
        HookZSAESpec(layer, architecture=architecture, expansion_factor=2, sae_kwargs={"l1_coefficient": 1.0})
        for layer in (0, 1)
        for architecture in ("block_diagonal", "standard")
    ]
    # the forward pass stops after layer 1's hook_z: neither its output projection nor its MLP runs
    with ForwardCounter(tiny_model, ["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"]) as counter:
        trained = train_hook_z_saes(tiny_model, specs, dataset=train_tokens, output_path=tmp_path, **RUN)
    references, separate_passes = separate_runs(tiny_model, specs, train_tokens)
    assert list(trained) == ["L0_block_diagonal", "L0_standard", "L1_block_diagonal", "L1_standard"]
    for name, (sae, layout) in trained.items():
        assert_same_weights(sae, references[name], name)
        assert layout == HeadLayout.from_sae(sae, tiny_model)
    # one forward per LLM batch for all four SAEs; four separate runs need four times as many
    assert counter.passes > 0 and separate_passes == 4 * counter.passes
    assert counter.later == []


def test_head_subsets_per_head_norm_and_sparsity_sweeps_at_one_hook_equal_separate_runs(tiny_model, train_tokens):
    specs = [
        HookZSAESpec(1, heads=(3, 0), expansion_factor=2, per_head_norm=True, sae_kwargs={"l1_coefficient": 1.0}),
        HookZSAESpec(1, architecture="topk", expansion_factor=2, sae_kwargs={"k": 4}),
        *(HookZSAESpec(1, architecture="standard", expansion_factor=2, sae_kwargs={"l1_coefficient": l1},
                       name=f"L1_standard_l1={l1}") for l1 in (0.5, 4.0)),
    ]
    trained = train_hook_z_saes(tiny_model, specs, dataset=train_tokens, **RUN)
    references, _ = separate_runs(tiny_model, specs, train_tokens)
    for name, (sae, _) in trained.items():
        assert_same_weights(sae, references[name], name)
    subset, _ = trained["L1H3H0_block_diagonal"]
    assert subset.cfg.metadata["head_layout"]["heads"] == [3, 0]
    assert subset.cfg.metadata.hook_name == "blocks.1.attn.hook_z"  # not the stream key
    assert len(subset.cfg.metadata["per_head_scale_folded"]) == 2
    # the sweep really differs: a stronger L1 penalty leaves fewer active features
    assert trained["L1_standard_l1=4.0"][0].cfg.metadata.l0 < trained["L1_standard_l1=0.5"][0].cfg.metadata.l0


def test_output_folder_holds_one_loadable_sae_per_name_and_a_saes_json_listing_them(tiny_model, train_tokens, tmp_path):
    specs = [HookZSAESpec(0, heads=(1,), architecture="standard", expansion_factor=2),
             HookZSAESpec(1, architecture="topk", expansion_factor=2, sae_kwargs={"k": 3})]
    train_hook_z_saes(tiny_model, specs, dataset=train_tokens, output_path=tmp_path, **RUN)
    entries = json.loads((tmp_path / "saes.json").read_text())
    assert [(e["name"], e["layer"], e["heads"], e["architecture"], e["path"]) for e in entries] == [
        ("L0H1_standard", 0, [1], "standard", "L0H1_standard"),
        ("L1_topk", 1, [0, 1, 2, 3], "topk", "L1_topk"),
    ]
    for entry in entries:
        sae = SAE.load_from_disk(tmp_path / entry["path"])
        assert entry["metrics"]["training_l0"] == pytest.approx(sae.cfg.metadata.l0)
        assert HeadLayout.from_sae(sae, tiny_model).heads == tuple(entry["heads"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_runner_refuses_configs_that_do_not_match_the_sources(tiny_model, train_tokens):
    source = HookZSource(tiny_model, 1, heads=[2])
    saes = {"a": StandardTrainingSAEConfig(d_in=16, d_sae=32)}
    fields = dict(context_size=32, training_tokens=256, train_batch_size_tokens=128,
                  store_batch_size_prompts=4, checkpoint_path=None, output_path=None)
    with pytest.raises(ValueError, match=r"hook name 'blocks.1.attn.hook_z' does not match its source; "
                                         r"set it to 'blocks.1.attn.hook_z\[2\]'"):
        cfg = MultiSAETrainingRunnerConfig(saes=saes, hook_names="blocks.1.attn.hook_z", **fields)
        HookZMultiSAETrainingRunner(cfg, {"a": source}, override_dataset=as_token_dataset(train_tokens))
    wide = {"a": StandardTrainingSAEConfig(d_in=64, d_sae=32)}
    with pytest.raises(ValueError, match="SAE 'a': d_in=64 does not match its source's 16"):
        HookZMultiSAETrainingRunner(multi_runner_config({"a": source}, wide, **fields), {"a": source})
    assert stream_key(HookZSource(tiny_model, 0, per_head_norm=True)) == "blocks.0.attn.hook_z+per_head_norm"
    with pytest.raises(ValueError, match=r"SAE names must be unique, got \['L0_standard'\]"):
        train_hook_z_saes(tiny_model, [HookZSAESpec(0, architecture="standard")] * 2, dataset=train_tokens)


def test_diverged_training_saves_no_sae(tiny_model, train_tokens, tmp_path):
    specs = [HookZSAESpec(0, architecture="standard", expansion_factor=2), HookZSAESpec(1, expansion_factor=2)]
    with pytest.raises(TrainingDiverged, match=r"^SAE 'L[01]_\w+': training diverged in step \d+: loss .*; "
                                               "no SAE of this run was saved"):
        train_hook_z_saes(tiny_model, specs, dataset=train_tokens, output_path=tmp_path, **{**RUN, "lr": 1e20})
    assert list(tmp_path.iterdir()) == []
    sae = SAE.from_dict(StandardTrainingSAEConfig(d_in=4, d_sae=8).to_dict())
    with torch.no_grad():
        sae.b_enc[3] = float("nan")
    with pytest.raises(ValueError, match="training diverged: b_enc hold NaN or inf"):
        check_finite_weights(sae)


def test_checkpoints_hold_each_sae_with_its_source_state_and_resume_takes_the_scales(tiny_model, train_tokens, tmp_path):
    specs = [HookZSAESpec(1, heads=(1, 3), per_head_norm=True, expansion_factor=2, name="subset"),
             HookZSAESpec(0, architecture="standard", expansion_factor=2)]
    train_hook_z_saes(tiny_model, specs, dataset=train_tokens, checkpoint_path=str(tmp_path),
                      runner_kwargs={"n_checkpoints": 1}, **RUN)
    [checkpoint] = {path.parent.parent for path in tmp_path.rglob("hook_z_source.json")}
    states = {name: json.loads((checkpoint / name / "hook_z_source.json").read_text()) for name in ("subset", "L0_standard")}
    assert states["subset"]["head_layout"]["heads"] == [1, 3] and len(states["subset"]["per_head_scale"]) == 2
    assert states["L0_standard"]["per_head_scale"] is None
    assert (checkpoint / "subset" / "sae_weights.safetensors").is_file()  # SAELens's per-SAE checkpoint
    sources = {"subset": HookZSource(tiny_model, 1, heads=[1, 3], per_head_norm=True),
               "L0_standard": HookZSource(tiny_model, 0)}
    saes = {"subset": StandardTrainingSAEConfig(d_in=32, d_sae=64), "L0_standard": StandardTrainingSAEConfig(d_in=64, d_sae=128)}
    other_tokens = torch.randint(0, 101, (32, 32), generator=torch.Generator().manual_seed(5))
    cfg = multi_runner_config(sources, saes, context_size=32, training_tokens=256, train_batch_size_tokens=128,
                              store_batch_size_prompts=4, n_batches_in_buffer=8, checkpoint_path=None,
                              output_path=None, resume_from_checkpoint=str(checkpoint))
    HookZMultiSAETrainingRunner(cfg, sources, override_dataset=as_token_dataset(other_tokens))
    # taken from the checkpoint, not re-estimated from the other tokens
    assert sources["subset"].per_head_scale.tolist() == states["subset"]["per_head_scale"]


def test_in_training_evals_scale_each_sae_like_its_batches_and_skip_head_subsets(tiny_model, train_tokens):
    import copy

    from sae_lens.llm_sae_training_runner import LLMSaeEvaluator
    from sae_lens.training.activation_scaler import ActivationScaler

    from sae_lens_attn.training.folding import fold_input_scale

    sources = {"norm": HookZSource(tiny_model, 1, per_head_norm=True), "subset": HookZSource(tiny_model, 1, heads=[0])}
    saes = {"norm": StandardTrainingSAEConfig(d_in=64, d_sae=128), "subset": StandardTrainingSAEConfig(d_in=16, d_sae=32)}
    cfg = multi_runner_config(sources, saes, context_size=32, training_tokens=256, train_batch_size_tokens=128,
                              store_batch_size_prompts=4, n_batches_in_buffer=8, n_eval_batches=2,
                              checkpoint_path=None, output_path=None)
    torch.manual_seed(0)
    runner = HookZMultiSAETrainingRunner(cfg, sources, override_dataset=as_token_dataset(train_tokens))
    runner._set_sae_metadata()
    store = runner.activations_store
    store.iterable_sequences = store._iterate_tokenized_sequences()  # from the first prompt
    scalers = {name: ActivationScaler() for name in saes}
    with pytest.warns(UserWarning, match=r"subset: .* reads heads \[0\] only"):
        ours = runner.evaluator(runner.saes, store, scalers, cfg.hook_names_per_sae)
    assert ours and all(key.startswith("norm/") for key in ours)
    # reference: the SAE folded to raw input through SAELens's single-SAE evaluator
    folded = copy.deepcopy(runner.saes["norm"])
    fold_input_scale(folded, sources["norm"].input_scale)
    store.iterable_sequences = store._iterate_tokenized_sequences()  # the same prompts again
    reference = LLMSaeEvaluator(model=tiny_model, activations_store=store, eval_batch_size_prompts=None,
                                n_eval_batches=2, model_kwargs={})(folded, store, ActivationScaler())
    for group, name in [("model_performance_preservation", "ce_loss_with_sae"), ("shrinkage", "l2_ratio")]:
        assert ours[f"norm/{group}"][name] == pytest.approx(reference[group][name], rel=1e-4), name
