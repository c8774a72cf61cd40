"""Circuit attribution: value side, query/key side and downstream effects add up exactly.

References: engineer C's `feature_dfa` (the DFA term per source and head), SAELens's own
`hook_sae_acts_pre`, TransformerLens's `hook_attn_scores`, the cached activations an
upstream SAE reads, and an ablated forward pass of `HookedSAETransformer`.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model
from sae_lens import HookedSAETransformer, StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_lens_attn.architectures.block_diagonal import BlockDiagonalSAE, BlockDiagonalSAEConfig
from sae_lens_attn.attribution.circuit.context import circuit_context
from sae_lens_attn.attribution.circuit.downstream import downstream_effect
from sae_lens_attn.attribution.circuit.feature import (
    downstream_rows,
    feature_circuit,
    query_key_rows,
    upstream_rows,
)
from sae_lens_attn.attribution.circuit.query_key import query_key_attribution
from sae_lens_attn.attribution.circuit.upstream import value_side_attribution
from sae_lens_attn.attribution.dfa import dfa_hook_names, feature_dfa

LAYER = 1
HOOK = f"blocks.{LAYER}.attn.hook_z"
TOL = {"atol": 1e-4, "rtol": 1e-4}


def randomize_biases(model: HookedTransformer, seed: int) -> HookedTransformer:
    """TransformerLens initialises biases to 0 and LayerNorm weights to 1: make them random
    so that every bias term and the LayerNorm weight matter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1] in ("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b", "b_U"):
                param.normal_(0.0, 0.2, generator=generator)
            elif name.endswith(".w"):
                param.uniform_(0.5, 1.5, generator=generator)
    return model


def random_sae(
    hook_name: str, d_in: int, d_sae: int, seed: int, block_diagonal: bool = False, **cfg
) -> StandardSAE | BlockDiagonalSAE:
    metadata = SAEMetadata(hook_name=hook_name)
    if block_diagonal:
        sae = BlockDiagonalSAE(
            BlockDiagonalSAEConfig(d_in=d_in, d_sae=d_sae, n_heads=4, metadata=metadata, **cfg)
        )
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=metadata, **cfg))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_(0.0, 0.3, generator=generator)
    return sae


@pytest.fixture(scope="module")
def model() -> HookedTransformer:
    return randomize_biases(make_tiny_model(), seed=1)


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def cache(model, tokens):
    return model.run_with_cache(tokens)[1]


def reference_dfa(sae, cache, feature: int, destination: int, batch: int = 1):
    pattern_name, v_name = dfa_hook_names(LAYER)
    return feature_dfa(
        sae, cache[pattern_name], cache[v_name], [feature], dest=torch.full((2,), destination)
    )


@pytest.mark.parametrize(
    "sae_options",
    [
        {},
        {"apply_b_dec_to_input": False},
        {"normalize_activations": "constant_norm_rescale"},
        {"normalize_activations": "layer_norm"},
        {"block_diagonal": True},
        {"block_diagonal": True, "normalize_activations": "constant_norm_rescale"},
    ],
    ids=["dense", "no-b_dec-input", "norm-rescale", "layer-norm", "block-diagonal",
         "block-diagonal-norm-rescale"],
)
def test_value_side_terms_add_up_to_dfa_and_preactivation(model, cache, sae_options):
    sae = random_sae(HOOK, 64, 96, seed=4, **sae_options)
    context = circuit_context(model, sae, cache, batch=1)
    for feature, destination in ((3, 11), (40, 6)):
        value = value_side_attribution(context, feature, destination)
        if sae_options.get("block_diagonal"):  # feature j lives in head j // 24 only
            by_head = value.terms.abs().sum(dim=(0, 1))
            assert by_head.nonzero().flatten().tolist() == [feature // 24]
        reference = reference_dfa(sae, cache, feature, destination)
        # components + ln1.b + b_V == DFA term of every (source, head), C's convention
        torch.testing.assert_close(value.dfa, reference.by_source_head[1, 0], **TOL)
        total = value.terms.sum() + value.centring + value.b_enc
        assert value.centring == pytest.approx(reference.b_dec_term.item(), abs=1e-5)
        assert total.item() == pytest.approx(reference.pre_activation[1, 0].item(), abs=1e-4)
        assert total.item() == pytest.approx(value.pre_activation, abs=1e-4)
        assert abs(value.closure_error) < 1e-4


def test_value_side_every_component_matters(model, cache):
    """Non-trivial: the embedding, each earlier head and MLP0 all contribute."""
    sae = random_sae(HOOK, 64, 96, seed=4)
    value = value_side_attribution(circuit_context(model, sae, cache, batch=1), 3, 11)
    by_label = dict(zip(value.labels, value.terms.abs().sum(dim=(1, 2)).tolist(), strict=True))
    assert set(by_label) == {
        "L0H0", "L0H1", "L0H2", "L0H3", "0_mlp_out", "embed", "pos_embed", "bias", "ln1.b", "b_V"
    }
    assert min(by_label.values()) > 1e-4


@pytest.mark.parametrize(
    ("hook_name", "d_in", "replaced"),
    [
        ("blocks.0.hook_mlp_out", 64, ["0_mlp_out"]),
        ("blocks.0.attn.hook_z", 64, ["L0H0", "L0H1", "L0H2", "L0H3"]),
        ("blocks.0.hook_attn_out", 64, ["L0H0", "L0H1", "L0H2", "L0H3"]),
        ("blocks.1.hook_resid_pre", 64, None),
    ],
)
def test_upstream_sae_features_plus_error_add_up_to_the_component_they_split(
    model, cache, hook_name, d_in, replaced
):
    sae = random_sae(HOOK, 64, 96, seed=4)
    upstream = random_sae(hook_name, d_in, 128, seed=5)
    plain = value_side_attribution(circuit_context(model, sae, cache, batch=1), 3, 11)
    context = circuit_context(model, sae, cache, batch=1, upstream_saes=[upstream])
    split = value_side_attribution(context, 3, 11)
    (component_split,) = context.splits
    # the split's parts (features, b_dec, error) sum to the hook's cached activation
    activation = cache[hook_name][1]
    if hook_name.endswith("hook_z"):
        activation = torch.einsum("phd,hdm->pm", activation, model.blocks[0].attn.W_O)
    torch.testing.assert_close(component_split.stack.sum(0), activation, **TOL)
    assert len(component_split.features) > 0
    # ... and, through ln1, W_V and the encoder, to the contributions of what they replace
    # (plus the b_O part of `bias` they carry)
    replaced = replaced or [x for x in plain.labels if x not in ("ln1.b", "b_V", "bias")]
    parts = [i for i, label in enumerate(split.labels) if label.startswith(component_split.name)]
    old = [plain.labels.index(label) for label in replaced]
    bias = plain.labels.index("bias"), split.labels.index("bias")
    carried_bias = plain.terms[bias[0]] - split.terms[bias[1]]
    torch.testing.assert_close(
        split.terms[parts].sum(0), plain.terms[old].sum(0) + carried_bias, **TOL
    )
    torch.testing.assert_close(split.dfa, plain.dfa, **TOL)


def test_upstream_sae_must_be_upstream_of_the_layer(model, cache):
    sae = random_sae(HOOK, 64, 96, seed=4)
    late = random_sae("blocks.1.hook_mlp_out", 64, 32, seed=5)
    with pytest.raises(ValueError, match="not upstream of layer 1"):
        circuit_context(model, sae, cache, upstream_saes=[late])


def test_bad_feature_or_position_is_a_teaching_error(model, cache):
    context = circuit_context(model, random_sae(HOOK, 64, 96, seed=4), cache)
    with pytest.raises(ValueError, match="features 0..95"):
        value_side_attribution(context, 96, 3)
    with pytest.raises(ValueError, match="positions 0..11"):
        value_side_attribution(context, 1, 12)


def positional_model(positional: str) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=101, n_ctx=64,
        act_fn="gelu", normalization_type="LN", positional_embedding_type=positional,
        rotary_dim=8 if positional == "rotary" else None, seed=2, device="cpu",
    )
    return randomize_biases(HookedTransformer(cfg), seed=2).eval()


def test_alibi_has_a_value_side_but_no_query_key_side_and_shortformer_is_refused(tokens):
    sae = random_sae(HOOK, 64, 96, seed=4)
    alibi = positional_model("alibi")
    context = circuit_context(alibi, sae, alibi.run_with_cache(tokens)[1], batch=1)
    assert abs(value_side_attribution(context, 3, 11).closure_error) < 1e-4
    with pytest.raises(ValueError, match="not 'alibi'"):
        query_key_attribution(context, 0, 11, 4)
    assert feature_circuit(alibi, sae, tokens[1], 3, downstream=False).query_key is None
    shortformer = positional_model("shortformer")
    with pytest.raises(ValueError, match="shortformer"):
        circuit_context(shortformer, sae, shortformer.run_with_cache(tokens)[1])


@pytest.mark.parametrize("positional", ["standard", "rotary"])
def test_query_key_terms_add_up_to_the_attention_score(model, tokens, positional):
    model = model if positional == "standard" else positional_model(positional)
    _, cache = model.run_with_cache(tokens)
    context = circuit_context(model, random_sae(HOOK, 64, 96, seed=4), cache, batch=1)
    scores = cache[f"blocks.{LAYER}.attn.hook_attn_scores"][1]
    for head, destination, source in ((0, 11, 4), (3, 7, 7), (2, 5, 0)):
        qk = query_key_attribution(context, head, destination, source)
        assert qk.matrix.sum().item() == pytest.approx(
            scores[head, destination, source].item(), abs=1e-4
        )
        assert qk.query_totals.sum().item() == pytest.approx(qk.key_totals.sum().item(), abs=1e-4)


@pytest.fixture(scope="module")
def attn_only_model() -> HookedTransformer:
    return randomize_biases(make_tiny_model(attn_only=True, seed=3), seed=3)


@pytest.mark.parametrize("block_diagonal", [False, True], ids=["dense", "block-diagonal"])
def test_total_effect_equals_direct_effect_when_no_layer_follows(
    attn_only_model, tokens, block_diagonal
):
    sae = random_sae(HOOK, 64, 96, seed=6, block_diagonal=block_diagonal)
    _, cache = attn_only_model.run_with_cache(tokens[:1])
    busiest = circuit_context(attn_only_model, sae, cache).acts.sum(0).topk(2).indices
    for feature in busiest.tolist():
        effect = downstream_effect(attn_only_model, sae, tokens[0], feature, freeze_final_ln_scale=True)
        assert effect.activation.abs().sum() > 0
        assert effect.direct.abs().max() > 0.1
        torch.testing.assert_close(effect.total, effect.direct, atol=1e-4, rtol=1e-4)
        # with the final LayerNorm scale left free, the ablation also rescales the stream
        free = downstream_effect(attn_only_model, sae, tokens[0], feature)
        assert (free.total - free.direct).abs().max() > 1e-3


def test_direct_effect_is_activation_times_output_direction_through_frozen_ln(model, tokens):
    sae = random_sae(HOOK, 64, 96, seed=6)
    effect = downstream_effect(model, sae, tokens[0], 5)
    _, cache = model.run_with_cache(tokens[:1])
    direction = torch.einsum("hd,hdm->m", sae.W_dec[5].reshape(4, 16), model.blocks[LAYER].attn.W_O)
    resid = effect.activation[:, None] * direction  # [pos, d_model]
    scale = cache["ln_final.hook_scale"][0]
    expected = (resid - resid.mean(-1, keepdim=True)) / scale * model.ln_final.w @ model.W_U
    torch.testing.assert_close(effect.direct, expected.detach(), **TOL)
    # MLP1 follows the hooked layer, so part of the total effect is indirect
    assert (effect.indirect).abs().max() > 1e-3


def test_downstream_restores_the_sae_hook_names_that_splicing_renames(attn_only_model, tokens):
    sae = random_sae(HOOK, 64, 96, seed=6)
    # upstream behaviour being worked around (sae_lens 6.54): add_sae renames hook points
    spliced = HookedSAETransformer(attn_only_model.cfg)
    spliced.add_sae(sae)
    assert sae.hook_sae_acts_pre.name == f"{HOOK}.hook_sae_acts_pre"
    spliced.reset_saes()
    downstream_effect(attn_only_model, sae, tokens[0], 0)
    assert sae.hook_sae_acts_pre.name == "hook_sae_acts_pre"
    assert "hook_sae_acts_pre" in sae.run_with_cache(torch.randn(2, 64))[1]


def test_feature_circuit_tables(model, tokens):
    sae = random_sae(HOOK, 64, 96, seed=4)
    circuit = feature_circuit(model, sae, tokens[1], feature=3, n_sources=2)
    acts = circuit_context(model, sae, model.run_with_cache(tokens[1:])[1]).acts[:, 3]
    assert circuit.destination == int(acts.argmax())
    rows = upstream_rows(circuit)
    per_source_sum = sum(r["contribution"] for r in rows if r["source"] is not None)
    top = circuit.value.dfa[circuit.top_sources].sum().item()
    assert per_source_sum == pytest.approx(top, abs=1e-4)
    qk = query_key_rows(circuit)
    assert {r["side"] for r in qk} == {"query", "key"}
    down = downstream_rows(circuit, k=3)
    assert 3 <= len(down) <= 6
    assert down[0]["direct"] == pytest.approx(circuit.downstream.direct[circuit.destination].max().item())
