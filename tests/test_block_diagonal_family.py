"""Per-head BatchTopK and per-head JumpReLU against SAELens's BatchTopK and JumpReLU:
applied to each head's slice separately, and on the masked dense matrix."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.batchtopk_sae import BatchTopK, BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
from sae_lens.saes.sae import TrainingSAE, TrainStepInput

from sae_lens_attn.architectures.block_diagonal import (
    BlockDiagonalBatchTopKTrainingSAE,
    BlockDiagonalBatchTopKTrainingSAEConfig,
    BlockDiagonalJumpReLUSAE,
    BlockDiagonalJumpReLUSAEConfig,
    BlockDiagonalJumpReLUTrainingSAE,
    BlockDiagonalJumpReLUTrainingSAEConfig,
    BlockDiagonalSAE,
    BlockDiagonalTrainingSAE,
    PerHeadBatchTopK,
)
from tests.test_block_diagonal import (
    D_IN,
    D_SAE,
    N_HEADS,
    PER_HEAD,
    dense_copy,
    dense_from_blocks,
    inputs,
    randomise,
)


def step_input(
    x: torch.Tensor, coefficients: dict[str, float], dead: torch.Tensor | None = None
) -> TrainStepInput:
    return TrainStepInput(
        sae_in=x,
        coefficients=coefficients,
        dead_neuron_mask=dead,
        n_training_steps=0,
        is_logging_step=False,
    )


def jumprelu_pair(**fields):
    """Our per-head JumpReLU and SAELens's dense JumpReLU holding the same masked matrix
    and thresholds (positive, near the pre-activations, so the STE is non-zero)."""
    cfg = dict(d_in=D_IN, d_sae=D_SAE, jumprelu_bandwidth=0.8, **fields)
    ours = randomise(
        BlockDiagonalJumpReLUTrainingSAE(
            BlockDiagonalJumpReLUTrainingSAEConfig(n_heads=N_HEADS, **cfg)
        )
    )
    with torch.no_grad():
        ours.threshold.copy_(torch.linspace(0.05, 0.6, D_SAE))
    theirs = dense_copy(ours, JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig(**cfg))
    with torch.no_grad():
        theirs.threshold.copy_(ours.threshold)
    return ours, theirs


def batchtopk_sae(k: float = 1.5, **fields) -> BlockDiagonalBatchTopKTrainingSAE:
    cfg = BlockDiagonalBatchTopKTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS, k=k, **fields
    )
    return randomise(BlockDiagonalBatchTopKTrainingSAE(cfg))


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"jumprelu_ste_to_input": True, "pre_act_loss_coefficient": 0.3},
        {"jumprelu_sparsity_loss_mode": "tanh"},
        {"jumprelu_sparsity_loss_mode": "quadratic", "target_l0": 4.0},
    ],
    ids=["step", "step-ste-to-input-pre-act", "tanh", "quadratic"],
)
def test_per_head_jumprelu_step_equals_saelens_jumprelu_on_the_masked_dense_matrix(fields):
    ours, theirs = jumprelu_pair(**fields)
    x = inputs(16)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[[1, 6, 11]] = True
    out_ours = ours.training_forward_pass(step_input(x, {"l0": 0.4}, dead))
    out_theirs = theirs.training_forward_pass(step_input(x, {"l0": 0.4}, dead))
    assert out_ours.losses.keys() == out_theirs.losses.keys()
    assert 0 < (out_ours.feature_acts > 0).float().mean() < 1
    for name, loss in out_theirs.losses.items():
        torch.testing.assert_close(out_ours.losses[name], loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_ours.feature_acts, out_theirs.feature_acts, rtol=1e-5, atol=1e-6)
    out_ours.loss.backward()
    out_theirs.loss.backward()
    assert theirs.threshold.grad.abs().sum() > 0
    torch.testing.assert_close(ours.threshold.grad, theirs.threshold.grad, rtol=1e-5, atol=1e-6)
    for blocks, full in ((ours.W_enc_blocks, theirs.W_enc), (ours.W_dec_blocks, theirs.W_dec)):
        n, k, m = blocks.shape
        restricted = torch.stack(
            [full.grad[h * k : (h + 1) * k, h * m : (h + 1) * m] for h in range(n)]
        )
        torch.testing.assert_close(blocks.grad, restricted, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.b_enc.grad, theirs.b_enc.grad, rtol=1e-5, atol=1e-6)
    assert ours.get_coefficients().keys() == theirs.get_coefficients().keys() == {"l0"}


def test_per_head_batchtopk_equals_saelens_batchtopk_on_each_head_slice():
    x = torch.randn(7, 2, D_SAE, generator=torch.Generator().manual_seed(3))  # leading dims flatten
    for k in (1, 1.5, 2.25, PER_HEAD):
        expected = torch.cat([BatchTopK(k)(block) for block in x.split(PER_HEAD, dim=-1)], dim=-1)
        torch.testing.assert_close(PerHeadBatchTopK(N_HEADS, k)(x), expected, rtol=0, atol=0)
        per_head_l0 = (expected > 0).unflatten(-1, (N_HEADS, PER_HEAD)).sum(-1).float().mean((0, 1))
        assert (per_head_l0 <= k).all()


def test_per_head_thresholds_follow_saelens_batchtopk_update_on_each_head_slice():
    ours = batchtopk_sae(k=1.5, topk_threshold_lr=0.2)
    # SAELens's BatchTopK SAE on head h's slice alone, one per head
    references = [
        BatchTopKTrainingSAE(
            BatchTopKTrainingSAEConfig(d_in=4, d_sae=PER_HEAD, k=1.5, topk_threshold_lr=0.2)
        )
        for _ in range(N_HEADS)
    ]
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):
        acts = ours.activation_fn(torch.randn(6, D_SAE, generator=generator))
        ours.update_topk_threshold(acts)
        for h, reference in enumerate(references):
            reference.update_topk_threshold(acts[:, h * PER_HEAD : (h + 1) * PER_HEAD])
    expected = torch.stack([reference.topk_threshold for reference in references])
    assert (expected > 0).all() and len(set(expected.tolist())) == N_HEADS
    torch.testing.assert_close(ours.topk_threshold, expected, rtol=1e-12, atol=0)


def test_batchtopk_saves_as_a_per_head_jumprelu_with_each_heads_threshold(tmp_path):
    ours = batchtopk_sae(k=2)
    ours.cfg.metadata.hook_name = "blocks.0.attn.hook_z"
    x = inputs(32)
    for _ in range(3):
        ours.training_forward_pass(step_input(x, {}, torch.zeros(D_SAE, dtype=torch.bool)))
    thresholds = ours.topk_threshold.clone()
    assert (thresholds > 0).all()
    ours.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert type(loaded) is BlockDiagonalJumpReLUSAE
    assert (loaded.cfg.architecture(), loaded.cfg.activation, loaded.cfg.k) == (
        "block_diagonal_jumprelu",
        "jumprelu",
        None,
    )
    assert loaded.cfg.metadata.training_architecture == "block_diagonal_batchtopk"
    assert loaded.cfg.metadata.training_architecture_details["k"] == 2
    torch.testing.assert_close(loaded.threshold, thresholds.float().repeat_interleave(PER_HEAD))
    # the inference form: each token on its own, against its head's threshold
    with torch.no_grad():
        pre = ours.encode_with_hidden_pre(x)[1]
        head_threshold = thresholds.float().repeat_interleave(PER_HEAD)
        torch.testing.assert_close(
            loaded.encode(x), pre.relu() * (pre > head_threshold), rtol=0, atol=1e-6
        )


def test_saved_per_head_jumprelu_encodes_and_decodes_as_the_training_sae(tmp_path):
    ours, _ = jumprelu_pair()
    ours.cfg.metadata.hook_name = "blocks.0.attn.hook_z"
    ours.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert type(loaded) is BlockDiagonalJumpReLUSAE and loaded.cfg.n_heads == N_HEADS
    x = inputs(9)
    with torch.no_grad():
        acts = ours.encode_with_hidden_pre(x)[0]
        assert 0 < (acts > 0).float().mean() < 1
        torch.testing.assert_close(loaded.encode(x), acts, rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), ours.decode(acts), rtol=0, atol=0)


def test_dense_views_and_dense_jumprelu_copy_hold_the_blocks():
    ours, _ = jumprelu_pair()
    inference = BlockDiagonalJumpReLUSAE(
        BlockDiagonalJumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS)
    )
    inference.load_state_dict(ours.state_dict())
    assert torch.equal(inference.W_enc, dense_from_blocks(inference.W_enc_blocks))
    assert torch.equal(inference.W_dec, dense_from_blocks(inference.W_dec_blocks))
    dense = inference.to_dense_sae()
    assert type(dense) is JumpReLUSAE
    assert torch.equal(dense.W_enc, inference.W_enc) and torch.equal(
        dense.threshold, inference.threshold
    )
    x = inputs(6)
    with torch.no_grad():
        torch.testing.assert_close(dense.encode(x), inference.encode(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(dense(x), inference(x), rtol=0, atol=1e-5)


def test_fold_W_dec_norm_scales_the_thresholds_and_keeps_the_output():
    ours, _ = jumprelu_pair()
    x = inputs(8)
    with torch.no_grad():
        before = ours(x)
        ours.fold_W_dec_norm()
        torch.testing.assert_close(ours(x), before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.W_dec_blocks.norm(dim=-1), torch.ones(N_HEADS, PER_HEAD))
    with pytest.raises(NotImplementedError, match="batch top-k"):
        batchtopk_sae().fold_W_dec_norm()


@pytest.mark.parametrize(
    ("config_class", "fields", "message"),
    [
        (
            BlockDiagonalBatchTopKTrainingSAEConfig,
            {},
            r"needs k .* in \(0, d_sae_per_head=5\], got k=None",
        ),
        (BlockDiagonalBatchTopKTrainingSAEConfig, {"k": 6}, r"in \(0, d_sae_per_head=5\], got k=6"),
        (
            BlockDiagonalBatchTopKTrainingSAEConfig,
            {"k": 2, "rescale_acts_by_decoder_norm": True},
            "supports neither rescale_acts_by_decoder_norm",
        ),
        (
            BlockDiagonalJumpReLUTrainingSAEConfig,
            {"jumprelu_sparsity_loss_mode": "quadratic", "target_l0": 0.0},
            "target_l0 must be greater than 0",
        ),
        (
            BlockDiagonalJumpReLUTrainingSAEConfig,
            {"jumprelu_sparsity_loss_mode": "quadratic"},
            "target_l0 must be set",
        ),
        (BlockDiagonalJumpReLUTrainingSAEConfig, {"k": 2}, "has activation='jumprelu' and no k"),
        (
            BlockDiagonalJumpReLUSAEConfig,
            {"activation": "relu"},
            "has activation='jumprelu' and no k",
        ),
    ],
)
def test_bad_configs_say_what_is_valid(config_class, fields, message):
    with pytest.raises(ValueError, match=message):
        config_class(d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS, **fields)


@pytest.mark.parametrize(
    ("name", "fields", "saved_as"),
    [
        ("block_diagonal", {"activation": "topk", "k": 2}, BlockDiagonalSAE),
        ("block_diagonal_batchtopk", {"k": 2.5}, BlockDiagonalJumpReLUSAE),
        (
            "block_diagonal_jumprelu",
            {"target_l0": 3.0, "jumprelu_sparsity_loss_mode": "quadratic"},
            BlockDiagonalJumpReLUSAE,
        ),
    ],
)
def test_each_family_member_is_built_trained_saved_and_loaded_by_name_through_saelens(
    tmp_path, name, fields, saved_as
):
    """SAELens's architecture contract, by registry name only: the config from a dict (as
    the runner builds it), a training step whose loss has gradients for every parameter,
    the training checkpoint round trip (`TrainingSAE.load_from_disk`) and the inference
    SAE (`SAE.load_from_disk`)."""
    training_class, config_class = SAE_TRAINING_CLASS_REGISTRY[name]
    assert issubclass(training_class, BlockDiagonalTrainingSAE)
    cfg = config_class.from_dict(
        {
            "architecture": name,
            "d_in": D_IN,
            "d_sae": D_SAE,
            "n_heads": N_HEADS,
            **fields,
            "metadata": {"hook_name": "blocks.0.attn.hook_z"},
        }
    )
    assert cfg.architecture() == name and type(cfg) is config_class
    sae = TrainingSAE.from_dict(cfg.to_dict())
    assert type(sae) is training_class
    x = inputs(16)
    output = sae.training_forward_pass(
        step_input(
            x, dict.fromkeys(sae.get_coefficients(), 1.0), torch.ones(D_SAE, dtype=torch.bool)
        )
    )
    output.loss.backward()
    assert all(param.grad is not None for param in sae.parameters())
    sae.save_model(tmp_path / "training")
    reloaded = TrainingSAE.load_from_disk(tmp_path / "training")
    assert type(reloaded) is training_class
    for key, tensor in sae.state_dict().items():
        # the head thresholds are float64, and come back through SAELens's float32 loader
        torch.testing.assert_close(
            reloaded.state_dict()[key],
            tensor,
            rtol=1e-7 if tensor.dtype == torch.float64 else 0,
            atol=0,
        )
    sae.save_inference_model(tmp_path / "inference")
    loaded = SAE.load_from_disk(tmp_path / "inference")
    assert type(loaded) is saved_as and SAE_CLASS_REGISTRY[loaded.cfg.architecture()][0] is saved_as


def test_saelens_command_line_accepts_the_per_head_architectures():
    from sae_lens.llm_sae_training_runner import _parse_cfg_args

    common = [
        "--d_in",
        "64",
        "--d_sae",
        "256",
        "--n_heads",
        "4",
        "--model_name",
        "m",
        "--hook_name",
        "blocks.0.attn.hook_z",
        "--dataset_path",
        "d",
    ]
    cfg = _parse_cfg_args(["--architecture", "block_diagonal_batchtopk", "--k", "2.5", *common])
    assert isinstance(cfg.sae, BlockDiagonalBatchTopKTrainingSAEConfig) and cfg.sae.k == 2.5
    cfg = _parse_cfg_args(
        ["--architecture", "block_diagonal_jumprelu", "--jumprelu_bandwidth", "0.1", *common]
    )
    assert (
        isinstance(cfg.sae, BlockDiagonalJumpReLUTrainingSAEConfig)
        and cfg.sae.jumprelu_bandwidth == 0.1
    )


def test_folding_a_per_head_input_scale_keeps_the_jumprelu_code():
    """`--per-head-norm` folds each head's scale into the blocks: pre-activations, and so
    the thresholds' meaning, stay the same."""
    ours, _ = jumprelu_pair()
    x = inputs(10)
    scale = torch.linspace(0.5, 3.0, N_HEADS).repeat_interleave(D_IN // N_HEADS)
    with torch.no_grad():
        before = ours.encode_with_hidden_pre(x * scale)[0]
        ours.fold_input_scaling(scale)
        torch.testing.assert_close(ours.encode_with_hidden_pre(x)[0], before, rtol=1e-5, atol=1e-5)
    assert (before > 0).any()
