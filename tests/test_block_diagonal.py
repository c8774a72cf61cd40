"""BlockDiagonalSAE against dense SAELens SAEs holding the same block-diagonal matrix."""

from __future__ import annotations

import copy

import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

from sae_lens_attn import (
    BlockDiagonalSAE,
    BlockDiagonalSAEConfig,
    BlockDiagonalTrainingSAE,
    BlockDiagonalTrainingSAEConfig,
)
from sae_lens_attn.plugins import get_plugin_manager

N_HEADS, D_HEAD, PER_HEAD = 3, 4, 5
D_IN, D_SAE = N_HEADS * D_HEAD, N_HEADS * PER_HEAD


def dense_from_blocks(blocks: torch.Tensor) -> torch.Tensor:
    """`[H, k, n]` -> `[H*k, H*n]`, zeros off the blocks, written out block by block."""
    n_heads, k, n = blocks.shape
    dense = torch.zeros(n_heads * k, n_heads * n, dtype=blocks.dtype)
    for h in range(n_heads):
        dense[h * k : (h + 1) * k, h * n : (h + 1) * n] = blocks[h]
    return dense


def randomise(sae, seed: int = 0):
    """Random blocks and biases (not the initialisation), in place; returns the SAE."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return sae


def dense_copy(sae, dense_class, dense_cfg):
    """A dense SAELens SAE with our weights written into it by `dense_from_blocks`."""
    dense = dense_class(dense_cfg)
    with torch.no_grad():
        dense.W_enc.copy_(dense_from_blocks(sae.W_enc_blocks))
        dense.W_dec.copy_(dense_from_blocks(sae.W_dec_blocks))
        dense.b_enc.copy_(sae.b_enc)
        dense.b_dec.copy_(sae.b_dec)
    return dense


def block_sae(**changes) -> BlockDiagonalSAE:
    return randomise(BlockDiagonalSAE(BlockDiagonalSAEConfig(d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS, **changes)))


def inputs(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, D_IN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
def test_encode_and_decode_equal_a_standard_sae_with_the_block_diagonal_matrix(apply_b_dec_to_input):
    ours = block_sae(apply_b_dec_to_input=apply_b_dec_to_input)
    dense = dense_copy(ours, StandardSAE, StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=apply_b_dec_to_input))
    x = inputs(6, 7)  # [batch, pos, d_in]
    with torch.no_grad():
        acts = ours.encode(x)
        assert (acts > 0).any() and (acts == 0).any()
        torch.testing.assert_close(acts, dense.encode(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.decode(acts), dense.decode(acts), rtol=0, atol=1e-5)
        torch.testing.assert_close(ours(x), dense(x), rtol=0, atol=1e-5)


def test_topk_keeps_the_k_largest_pre_activations_of_each_head():
    ours = block_sae(activation="topk", k=2)
    x = inputs(9)
    pre = (x - ours.b_dec) @ dense_from_blocks(ours.W_enc_blocks) + ours.b_enc
    expected = torch.zeros_like(pre)
    for h in range(N_HEADS):
        head = pre[:, h * PER_HEAD : (h + 1) * PER_HEAD]
        values, index = head.topk(2, dim=-1)
        expected[:, h * PER_HEAD : (h + 1) * PER_HEAD].scatter_(-1, index, values.relu())
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), expected, rtol=0, atol=1e-5)


def training_pair(lp_norm: float):
    cfg = dict(d_in=D_IN, d_sae=D_SAE, l1_coefficient=0.7, lp_norm=lp_norm)
    ours = randomise(BlockDiagonalTrainingSAE(BlockDiagonalTrainingSAEConfig(n_heads=N_HEADS, **cfg)))
    return ours, dense_copy(ours, StandardTrainingSAE, StandardTrainingSAEConfig(**cfg))


def step_input(x: torch.Tensor, dead: torch.Tensor | None = None) -> TrainStepInput:
    return TrainStepInput(
        sae_in=x, coefficients={"l1": 0.7}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False
    )


@pytest.mark.parametrize("lp_norm", [1.0, 2.0])
def test_block_gradients_equal_dense_gradients_restricted_to_the_blocks(lp_norm):
    ours, dense = training_pair(lp_norm)
    x = inputs(16)
    out_ours = ours.training_forward_pass(step_input(x))
    out_dense = dense.training_forward_pass(step_input(x))
    for name in ("mse_loss", "l1_loss"):
        torch.testing.assert_close(out_ours.losses[name], out_dense.losses[name], rtol=1e-5, atol=1e-6)
    out_ours.loss.backward()
    out_dense.loss.backward()
    for blocks, full in ((ours.W_enc_blocks, dense.W_enc), (ours.W_dec_blocks, dense.W_dec)):
        n, k, m = blocks.shape
        restricted = torch.stack([full.grad[h * k : (h + 1) * k, h * m : (h + 1) * m] for h in range(n)])
        torch.testing.assert_close(blocks.grad, restricted, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.b_enc.grad, dense.b_enc.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.b_dec.grad, dense.b_dec.grad, rtol=1e-5, atol=1e-6)


def test_l1_penalises_the_hooked_feature_acts_like_the_dense_sae():
    """A hook on hook_sae_acts_post replaces the acts: the L1 term (and its gradient)
    must use the hooked tensor, not the token sum taken before the hook."""
    ours, dense = training_pair(1.0)
    for sae in (ours, dense):
        sae.hook_sae_acts_post.add_hook(lambda acts, hook: acts * 3.0)
    x = inputs(16)
    out_ours, out_dense = ours.training_forward_pass(step_input(x)), dense.training_forward_pass(step_input(x))
    torch.testing.assert_close(out_ours.losses["l1_loss"], out_dense.losses["l1_loss"], rtol=1e-5, atol=1e-6)
    out_ours.loss.backward()
    out_dense.loss.backward()
    torch.testing.assert_close(ours.b_enc.grad, dense.b_enc.grad, rtol=1e-5, atol=1e-6)


def big_allocations_in_backward(sae, x) -> list[str]:
    """Names of the aten ops (innermost callers of `aten::empty`) that allocate a
    `[batch, d_sae]` float tensor in the backward."""
    loss = sae.training_forward_pass(step_input(x)).loss
    with torch.profiler.profile(profile_memory=True) as profile:
        loss.backward()
    big = x.shape[0] * D_SAE * x.element_size()
    events = [e for e in profile.events() if e.cpu_memory_usage >= big and e.name.startswith("aten::")]
    return [e.name for e in events if e.name != "aten::empty"]


def test_relu_step_backward_allocates_one_batch_by_d_sae_gradient():
    """The fused ReLU step (relu_decode) adds the L1 gradient into the decoder's fresh
    [batch, d_sae] gradient and applies ReLU's derivative there in place; the dense
    autograd chain (hooked acts) allocates a second buffer for `threshold_backward`."""
    ours, _ = training_pair(1.0)
    x = inputs(64)
    assert big_allocations_in_backward(ours, x) == ["aten::new_empty"]
    ours.hook_sae_acts_post.add_hook(lambda acts, hook: acts)
    assert len(big_allocations_in_backward(ours, x)) == 2


def test_no_part_of_the_training_graph_stays_on_the_sae():
    """The L1 token sum lives only inside `training_forward_pass`: afterwards, and after
    an encode with gradients, the SAE deep-copies (a kept non-leaf tensor would refuse)."""
    ours, _ = training_pair(1.0)
    x = inputs(8)
    output = ours.training_forward_pass(step_input(x))
    ours.encode_with_hidden_pre(x)
    assert ours._acts_token_sum is None
    copy.deepcopy(ours)
    output.loss.backward()


def saelens_aux_per_head(ours, x, sae_out, hidden_pre, dead) -> torch.Tensor:
    """The reference: SAELens's own TopK auxiliary loss (k_aux = d_head // 2) on each head
    alone, a TopK SAE holding that head's decoder block, summed over heads."""
    total = x.new_tensor(0.0)
    for h in range(N_HEADS):
        cfg = TopKTrainingSAEConfig(
            d_in=D_HEAD, d_sae=PER_HEAD, k=2, rescale_acts_by_decoder_norm=False,
            aux_loss_coefficient=ours.cfg.aux_loss_coefficient,
        )
        head = TopKTrainingSAE(cfg)
        with torch.no_grad():
            head.W_dec.copy_(ours.W_dec_blocks[h])
        inputs_, features = slice(h * D_HEAD, (h + 1) * D_HEAD), slice(h * PER_HEAD, (h + 1) * PER_HEAD)
        total = total + head.calculate_topk_aux_loss(
            x[:, inputs_], sae_out[:, inputs_], hidden_pre[:, features], dead[features]
        )
    return total


def topk_training_sae() -> BlockDiagonalTrainingSAE:
    cfg = BlockDiagonalTrainingSAEConfig(
        d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS, activation="topk", k=2, aux_loss_coefficient=0.3
    )
    return randomise(BlockDiagonalTrainingSAE(cfg))


@pytest.mark.parametrize(
    "dead_features",
    [[0, 3, 7, 8, 14], [0, 3, 7], [5, 6, 7, 8, 9], list(range(D_SAE))],
    ids=["some-in-every-head", "none-in-one-head", "one-whole-head", "all"],
)
def test_topk_auxiliary_loss_is_saelens_topk_auxiliary_loss_head_by_head(dead_features):
    ours = topk_training_sae()
    x = inputs(8)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[dead_features] = True
    output = ours.training_forward_pass(step_input(x, dead))
    hidden_pre = ours.encode_with_hidden_pre(x)[1]  # dense outside a step (the step's is sparse)
    expected = saelens_aux_per_head(ours, x, output.sae_out, hidden_pre, dead)
    assert expected > 0
    torch.testing.assert_close(output.losses["auxiliary_reconstruction_loss"], expected, rtol=1e-5, atol=1e-6)
    assert ours.get_coefficients() == {}


def test_topk_auxiliary_loss_sends_gradient_to_the_dead_features_and_is_zero_without_them():
    ours = topk_training_sae()
    x = inputs(8)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[[0, 3, 7, 8]] = True  # head 2 has none
    ours.training_forward_pass(step_input(x, dead)).losses["auxiliary_reconstruction_loss"].backward()
    dec_rows = ours.W_dec_blocks.grad.flatten(0, 1).norm(dim=-1)
    enc_columns = ours.W_enc_blocks.grad.transpose(1, 2).flatten(0, 1).norm(dim=-1)
    assert (dec_rows[dead] > 0).all() and (dec_rows[~dead] == 0).all()
    assert (enc_columns[dead] > 0).all() and (enc_columns[~dead] == 0).all()
    for mask in (None, torch.zeros_like(dead)):
        no_dead = ours.training_forward_pass(step_input(x, mask))
        assert no_dead.losses["auxiliary_reconstruction_loss"] == 0


def test_dense_views_and_dense_copy_hold_the_block_diagonal_matrix():
    ours = block_sae(reshape_activations="hook_z")
    ours.cfg.metadata.hook_name = "blocks.0.attn.hook_z"
    assert torch.equal(ours.W_enc, dense_from_blocks(ours.W_enc_blocks))
    assert torch.equal(ours.W_dec, dense_from_blocks(ours.W_dec_blocks))
    dense = ours.to_dense_sae()
    assert type(dense) is StandardSAE
    assert torch.equal(dense.W_enc, dense_from_blocks(ours.W_enc_blocks))
    assert torch.equal(dense.W_dec, dense_from_blocks(ours.W_dec_blocks))
    assert torch.equal(dense.b_enc, ours.b_enc) and torch.equal(dense.b_dec, ours.b_dec)
    assert dense.cfg.metadata == ours.cfg.metadata and dense.cfg.metadata is not ours.cfg.metadata
    assert dense.hook_z_reshaping_mode and dense.W_enc.device == ours.b_enc.device
    z = inputs(5).unflatten(-1, (N_HEADS, D_HEAD))  # hook_z shaped
    with torch.no_grad():
        torch.testing.assert_close(dense(z), ours(z), rtol=0, atol=1e-5)


def test_dense_copy_of_a_topk_sae_keeps_the_per_head_topk():
    ours = block_sae(activation="topk", k=1)
    x = inputs(7)
    with torch.no_grad():
        torch.testing.assert_close(ours.to_dense_sae()(x), ours(x), rtol=0, atol=1e-5)


def test_hook_z_mode_reads_and_returns_head_shaped_tensors():
    ours = block_sae(reshape_activations="hook_z")
    flat = inputs(2, 5)
    with torch.no_grad():
        out = ours(flat.unflatten(-1, (N_HEADS, D_HEAD)))
        ours.turn_off_forward_pass_hook_z_reshaping()
        expected = ours(flat)
    assert out.shape == (2, 5, N_HEADS, D_HEAD)
    torch.testing.assert_close(out.flatten(-2), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_save_and_load_from_disk_round_trip_is_bit_exact(tmp_path, dtype):
    ours = block_sae(activation="topk", k=3, dtype=dtype).to(getattr(torch, dtype))
    ours.cfg.metadata.hook_name = "blocks.1.attn.hook_z"
    ours.save_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert type(loaded) is BlockDiagonalSAE
    assert loaded.cfg.to_dict() == ours.cfg.to_dict()
    for name, tensor in ours.state_dict().items():
        assert loaded.state_dict()[name].dtype == getattr(torch, dtype)
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_training_sae_saves_an_inference_block_diagonal_sae(tmp_path):
    ours = randomise(BlockDiagonalTrainingSAE(BlockDiagonalTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS, l1_coefficient=3.0)))
    ours.save_inference_model(tmp_path)
    loaded = SAE.load_from_disk(tmp_path)
    assert type(loaded) is BlockDiagonalSAE and loaded.cfg.n_heads == N_HEADS
    assert loaded.cfg.metadata.training_architecture_details["l1_coefficient"] == 3.0
    x = inputs(4)
    with torch.no_grad():
        assert torch.equal(loaded(x), ours(x))


def test_fold_W_dec_norm_keeps_the_output_and_leaves_unit_decoder_rows():
    ours = block_sae()
    x = inputs(8)
    with torch.no_grad():
        before_acts, before = ours.encode(x), ours(x)
        norms = ours.W_dec.norm(dim=-1)
        ours.fold_W_dec_norm()
        torch.testing.assert_close(ours(x), before, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.encode(x), before_acts * norms, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.W_dec_blocks.norm(dim=-1), torch.ones(N_HEADS, PER_HEAD))


def test_topk_refuses_to_fold_W_dec_norm():
    with pytest.raises(NotImplementedError, match="which k features win"):
        block_sae(activation="topk", k=2).fold_W_dec_norm()


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
def test_fold_input_scaling_makes_the_sae_take_raw_input(apply_b_dec_to_input):
    ours = block_sae(apply_b_dec_to_input=apply_b_dec_to_input)
    scale = torch.tensor([2.2, 7.8, 0.5]).repeat_interleave(D_HEAD)  # one factor per head
    x = inputs(8)
    with torch.no_grad():
        acts_scaled = ours.encode(x * scale)
        recon_scaled = ours.decode(acts_scaled)
        ours.fold_input_scaling(scale)
        torch.testing.assert_close(ours.encode(x), acts_scaled, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), recon_scaled / scale, rtol=1e-5, atol=1e-5)


def test_fold_activation_norm_scaling_factor_matches_saelens_standard_sae():
    ours = block_sae(normalize_activations="expected_average_only_in")
    dense = dense_copy(ours, StandardSAE, StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, normalize_activations="expected_average_only_in"))
    ours.fold_activation_norm_scaling_factor(3.5)
    dense.fold_activation_norm_scaling_factor(3.5)
    assert ours.cfg.normalize_activations == "none"
    torch.testing.assert_close(ours.W_enc, dense.W_enc)
    torch.testing.assert_close(ours.W_dec, dense.W_dec)
    torch.testing.assert_close(ours.b_dec, dense.b_dec)


@pytest.mark.parametrize(
    ("scale", "changes", "message"),
    [
        (torch.ones(D_IN - 1), {}, r"scale must have shape \[12\]"),
        (torch.zeros(D_IN), {}, "finite and positive"),
        (torch.ones(D_IN), {"normalize_activations": "layer_norm"}, "rescales each token"),
    ],
)
def test_fold_input_scaling_refuses_what_it_cannot_fold(scale, changes, message):
    with pytest.raises(ValueError, match=message):
        block_sae(**changes).fold_input_scaling(scale)


def test_whitening_is_refused_because_it_mixes_heads():
    with pytest.raises(ValueError, match="mixes heads"):
        block_sae().fold_activation_whitening(torch.zeros(D_IN), torch.eye(D_IN), torch.eye(D_IN))
    with pytest.raises(ValueError, match="covariance_whitening.*mixes heads"):
        BlockDiagonalTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS, normalize_activations="covariance_whitening"
        )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"d_in": 768, "d_sae": 1000, "n_heads": 12}, "d_sae=1000 is not divisible by n_heads=12; nearest valid: 996 or 1008"),
        ({"d_in": 770, "d_sae": 1008, "n_heads": 12}, "d_in=770 is not divisible by n_heads=12; nearest valid: 768 or 780"),
        ({"d_in": 8, "d_sae": 5, "n_heads": 8}, "d_sae=5 is not divisible by n_heads=8; nearest valid: 8"),
        ({"d_in": 12, "d_sae": 24, "n_heads": 0}, "n_heads must be a positive integer"),
        ({"d_in": 12, "d_sae": 24, "n_heads": 3, "activation": "gelu"}, r"activation must be one of \('relu', 'topk'\)"),
        ({"d_in": 12, "d_sae": 24, "n_heads": 3, "activation": "topk"}, "between 1 and d_sae_per_head=8, got k=None"),
        ({"d_in": 12, "d_sae": 24, "n_heads": 3, "activation": "topk", "k": 9}, "between 1 and d_sae_per_head=8, got k=9"),
        ({"d_in": 12, "d_sae": 24, "n_heads": 3, "k": 4}, "k=4 is only used with activation='topk'"),
    ],
)
@pytest.mark.parametrize("config_class", [BlockDiagonalSAEConfig, BlockDiagonalTrainingSAEConfig])
def test_bad_configs_raise_errors_that_say_what_is_valid(config_class, fields, message):
    with pytest.raises(ValueError, match=message):
        config_class(**fields)


def test_config_shapes_and_feature_ownership():
    cfg = BlockDiagonalSAEConfig(d_in=768, d_sae=24576, n_heads=12)
    assert (cfg.d_head, cfg.d_sae_per_head) == (64, 2048)
    sae = BlockDiagonalSAE(cfg)
    assert sae.W_enc_blocks.shape == (12, 64, 2048) and sae.W_dec_blocks.shape == (12, 2048, 64)
    assert sum(p.numel() for p in sae.parameters()) == 2 * 768 * 24576 // 12 + 24576 + 768


def test_initialisation_unit_decoder_rows_and_encoder_as_transpose():
    torch.manual_seed(0)
    inference = BlockDiagonalSAE(BlockDiagonalSAEConfig(d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS))
    training = BlockDiagonalTrainingSAE(BlockDiagonalTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS))
    unscaled = BlockDiagonalTrainingSAE(
        BlockDiagonalTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS, decoder_init_norm=None)
    )
    for sae, norm in ((inference, 1.0), (training, 0.1), (unscaled, 1.0)):
        torch.testing.assert_close(sae.W_dec_blocks.norm(dim=-1), torch.full((N_HEADS, PER_HEAD), norm))
        assert torch.equal(sae.W_enc_blocks, sae.W_dec_blocks.transpose(1, 2))
        assert not sae.b_enc.any() and not sae.b_dec.any()


def test_bfloat16_matches_float32():
    ours = block_sae()
    x = inputs(32)
    with torch.no_grad():
        expected = ours(x)
        ours.to(torch.bfloat16)
        assert ours.cfg.dtype == "bfloat16"
        out = ours(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=5e-2, atol=5e-2)


def test_autocast_training_step_computes_in_bfloat16_and_keeps_float32_gradients():
    ours, _ = training_pair(1.0)
    reference, _ = training_pair(1.0)
    x = inputs(16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = ours.training_forward_pass(step_input(x))
    assert output.feature_acts.dtype == torch.bfloat16
    output.loss.backward()
    reference.training_forward_pass(step_input(x)).loss.backward()
    for param, ref in zip(ours.parameters(), reference.parameters(), strict=True):
        assert param.grad.dtype == torch.float32
        torch.testing.assert_close(param.grad, ref.grad, rtol=0.1, atol=0.1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    ours = block_sae(activation="topk", k=2)
    x = inputs(32)
    with torch.no_grad():
        expected = ours(x)
        out = ours.to("cuda")(x.cuda())
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)


def test_log_histograms_report_decoder_norms_and_encoder_bias():
    ours, _ = training_pair(1.0)
    histograms = ours.log_histograms()
    torch.testing.assert_close(torch.from_numpy(histograms["weights/W_dec_norms"]), ours.W_dec.norm(dim=-1).detach())
    assert histograms["weights/b_e"].shape == (D_SAE,)


def test_plugin_registers_the_four_classes_with_saelens_by_name():
    classes = get_plugin_manager().get("architecture", "block_diagonal")
    assert (classes.sae_class, classes.config_class) == (BlockDiagonalSAE, BlockDiagonalSAEConfig)
    assert SAE_CLASS_REGISTRY["block_diagonal"] == (BlockDiagonalSAE, BlockDiagonalSAEConfig)
    assert SAE_TRAINING_CLASS_REGISTRY["block_diagonal"] == (
        BlockDiagonalTrainingSAE,
        BlockDiagonalTrainingSAEConfig,
    )


def test_saelens_command_line_accepts_architecture_block_diagonal():
    from sae_lens.llm_sae_training_runner import _parse_cfg_args

    cfg = _parse_cfg_args(
        ["--architecture", "block_diagonal", "--d_in", "64", "--d_sae", "256", "--n_heads", "4",
         "--activation", "topk", "--k", "8", "--model_name", "m", "--hook_name", "blocks.0.attn.hook_z",
         "--dataset_path", "d"]
    )  # fmt: skip
    assert isinstance(cfg.sae, BlockDiagonalTrainingSAEConfig)
    assert (cfg.sae.n_heads, cfg.sae.activation, cfg.sae.k, cfg.sae.d_sae_per_head) == (4, "topk", 8, 64)


def test_a_config_registers_the_architecture_when_the_import_hook_did_not(monkeypatch):
    # as under `python -S` or SAE_LENS_ATTN_NO_AUTOLOAD=1: SAELens's registry lacks us
    monkeypatch.delitem(SAE_CLASS_REGISTRY, "block_diagonal")
    monkeypatch.delitem(SAE_TRAINING_CLASS_REGISTRY, "block_diagonal")
    cfg = BlockDiagonalTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, n_heads=N_HEADS)
    assert cfg.metadata.training_architecture == "block_diagonal"
    assert SAE_TRAINING_CLASS_REGISTRY["block_diagonal"][0] is BlockDiagonalTrainingSAE
