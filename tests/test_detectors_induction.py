""""<t> is next by induction" detector on a hand-built 2-layer induction model.

Layer 0 head 0 is a previous-token head; layer 1 head 0 is an induction head (it attends
to the token after the previous occurrence of the current token and copies it to the
logits); layer 1 head 1 attends to the current token. An SAE on layer 1's hook_z gets
planted features: three true induction features and five impostors.
"""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_lens_attn.detectors.induction import FAMILY, InductionDetector, top_promoted_tokens
from sae_lens_attn.detectors.induction_prompts import induction_prompts
from sae_lens_attn.detectors.results import family_summary
from sae_lens_attn.sources.head_layout import HeadLayout

V, N_CTX, D_HEAD = 24, 32, 32
TOK, POS, PREV, OUT = 0, V, V + N_CTX, 2 * V + N_CTX  # residual subspaces
SHARP = 30.0 * D_HEAD**0.5  # attention logit 30 after TransformerLens's 1/sqrt(d_head)


def induction_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=3 * V + N_CTX, n_ctx=N_CTX, d_head=D_HEAD, n_heads=2, d_vocab=V,
        attn_only=True, normalization_type=None, act_fn=None, device="cpu", seed=0,
    )
    model = HookedTransformer(cfg)
    model.eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        vocab, positions = torch.arange(V), torch.arange(N_CTX)
        model.embed.W_E[vocab, TOK + vocab] = 1.0
        model.pos_embed.W_pos[positions, POS + positions] = 1.0
        attn0, attn1 = model.blocks[0].attn, model.blocks[1].attn
        # layer 0 head 0: query at p matches the key at p - 1; copies that token to PREV
        attn0.W_Q[0, POS + positions, positions] = SHARP
        attn0.W_K[0, POS + positions[:-1], positions[:-1] + 1] = 1.0
        attn0.W_V[0, TOK + vocab, vocab] = 1.0
        attn0.W_O[0, vocab, PREV + vocab] = 1.0
        # layer 1 head 0: current token matches the key whose previous token it is
        attn1.W_Q[0, TOK + vocab, vocab] = SHARP
        attn1.W_K[0, PREV + vocab, vocab] = 1.0
        attn1.W_V[0, TOK + vocab, vocab] = 1.0
        attn1.W_O[0, vocab, OUT + vocab] = 1.0
        # layer 1 head 1: attends to the current position, reads the current token
        attn1.W_Q[1, POS + positions, positions] = SHARP
        attn1.W_K[1, POS + positions, positions] = 1.0
        attn1.W_V[1, TOK + vocab, vocab] = 1.0
        attn1.W_O[1, vocab, OUT + vocab] = 0.5
        model.unembed.W_U[OUT + vocab, vocab] = 1.0
    return model


INDUCTION = {0: 5, 1: 7, 2: 11}  # feature -> token it is "next by induction" for


def planted_sae(layout: HeadLayout) -> StandardSAE:
    """Features 0-2: induction for 5, 7, 11. 3: copies 9 but promotes 3. 4: always on.
    5: promotes 5 and fires on copying 5, but also everywhere. 6: current token is 13.
    7: dead."""
    sae = StandardSAE(StandardSAEConfig(d_in=layout.d_in, d_sae=8, apply_b_dec_to_input=False))
    layout.store_in(sae)
    head0, head1 = 0, D_HEAD
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.zero_()

        def plant(feature, reads, writes, weight=1.0, bias=-0.5):
            if reads is not None:
                sae.W_enc[reads, feature] = weight
            sae.W_dec[feature, writes] = 1.0
            sae.b_enc[feature] = bias

        for feature, token in INDUCTION.items():
            plant(feature, head0 + token, head0 + token, weight=1.0 + feature, bias=-0.5 * (1 + feature))
        plant(3, head0 + 9, head0 + 3)
        plant(4, None, head0 + 12, bias=1.0)
        plant(5, head0 + 5, head0 + 5, bias=0.1)
        plant(6, head1 + 13, head1 + 13)
        plant(7, None, head0 + 15, bias=-1.0)
    return sae


@pytest.fixture(scope="module")
def setup():
    model = induction_model()
    layout = HeadLayout.for_model(model, layer=1)
    return model, layout, planted_sae(layout)


def test_hand_built_model_really_does_induction(setup):
    model, _, _ = setup
    tokens = torch.tensor([[1, 3, 5, 8, 9, 10, 3]])
    logits = model(tokens)
    assert logits[0, -1].argmax().item() == 5  # "... 3 5 ... 3" -> predicts 5
    pattern_source = {}
    model.run_with_hooks(
        tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", lambda p, hook: pattern_source.setdefault("p", p))]
    )
    assert pattern_source["p"][0, 0, -1, 2].item() > 0.99


def test_top_promoted_token_is_the_planted_one(setup):
    model, layout, sae = setup
    from sae_lens_attn.attribution.logit_lens import sae_output_directions

    tokens, _ = top_promoted_tokens(sae_output_directions(sae, model, layout), model.W_U)
    assert tokens.tolist() == [5, 7, 11, 3, 12, 5, 13, 15]


def test_planted_induction_features_are_found_with_precision_and_recall_one(setup):
    model, layout, sae = setup
    rows = InductionDetector().detect(model, sae, layout, pairs_per_sequence=4, gap=1)
    found = {row.feature for row in rows if row.family == FAMILY}
    planted = set(INDUCTION)
    precision = len(found & planted) / max(len(found), 1)
    recall = len(found & planted) / len(planted)
    assert (precision, recall) == (1.0, 1.0)
    by_feature = {row.feature: row for row in rows}
    for feature, token in INDUCTION.items():
        evidence = by_feature[feature].evidence
        assert evidence["token"] == token and evidence["induction_rate"] == 1.0
        assert evidence["control_rate"] == 0.0 and by_feature[feature].score == 1.0
        assert evidence["heads"] == {"L1H0": 1.0, "L1H1": 0.0} and evidence["top_head"] == 0
        assert evidence["summary"].endswith("; L1H0)")
    # the impostor that fires on induction of its token also fires on every control
    assert by_feature[5].evidence["induction_rate"] == 1.0 and by_feature[5].evidence["control_rate"] == 1.0


def test_live_features_come_from_evaluation_tokens_and_the_share_is_of_live_features(setup):
    model, layout, sae = setup
    # "3 5 .. 3" copies 5, "4 7 .. 4" copies 7, "6 11 .. 6" copies 11, "8 9 .. 8" copies 9
    tokens = torch.tensor([[1, 3, 5, 4, 7, 6, 11, 8, 9, 13, 3, 4, 6, 8]])
    rows = InductionDetector().detect(model, sae, layout, tokens=tokens, pairs_per_sequence=4, gap=1)
    assert [row.live for row in rows] == [True] * 7 + [False]
    assert rows[7].evidence["summary"] == "not live: not seen in 14 tokens"  # too few tokens to say dead
    summary = family_summary(rows)["induction"]
    assert summary["live"] == 7 and summary["families"][FAMILY] == {"count": 3, "share_of_live": 3 / 7}


def test_prompts_put_each_tested_token_after_an_earlier_copy_of_the_test_token():
    tested = torch.tensor([3, 17, 40])
    prompts = induction_prompts(tested, torch.arange(100), n_prompts=5, pairs_per_sequence=4, gap=2, bos_token_id=0)
    assert prompts.tokens.shape[1] == 1 + 4 * 4 + 4 * 3 and (prompts.tokens[:, 0] == 0).all()
    for s in range(len(prompts)):
        seq = prompts.tokens[s]
        for k in range(4):
            first, second = prompts.first_positions[s, k], prompts.test_positions[s, k]
            a = seq[first]
            assert seq[second] == a and seq[first + 1] == prompts.tested_tokens[s, k]
            assert (seq[:first] != a).all() and (seq[first + 1 : second] != a).all()
    counts = torch.bincount(prompts.tested_tokens.flatten(), minlength=100)
    assert (counts[tested] >= 5).all()


def test_contradictory_thresholds_are_rejected(setup):
    model, layout, sae = setup
    with pytest.raises(ValueError, match="max_control_rate < min_induction_rate"):
        InductionDetector().detect(model, sae, layout, min_induction_rate=0.1, max_control_rate=0.5)


def test_block_diagonal_sae_gives_the_same_families_as_its_dense_copy(setup):
    from sae_lens_attn.architectures.block_diagonal import BlockDiagonalSAE, BlockDiagonalSAEConfig

    model, layout, _ = setup
    sae = BlockDiagonalSAE(
        BlockDiagonalSAEConfig(d_in=layout.d_in, d_sae=8, n_heads=2, apply_b_dec_to_input=False)
    )
    layout.store_in(sae)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.zero_()
        for feature, token in INDUCTION.items():  # head 0 owns features 0-3
            sae.W_enc_blocks[0, token, feature] = 1.0
            sae.W_dec_blocks[0, feature, token] = 1.0
            sae.b_enc[feature] = -0.5
        sae.W_enc_blocks[1, 13, 0] = 1.0  # feature 4 (head 1): the current token is 13
        sae.W_dec_blocks[1, 0, 13] = 1.0
        sae.b_enc[4] = -0.5
    options = {"pairs_per_sequence": 4, "gap": 1, "features": range(5)}
    rows = InductionDetector().detect(model, sae, layout, **options)
    dense = InductionDetector().detect(model, sae.to_dense_sae(), layout, **options)
    assert [r.family for r in rows] == [FAMILY] * 3 + [None, None]
    assert [(r.family, r.score) for r in rows] == [(r.family, r.score) for r in dense]
    assert all(r.evidence["heads"] == {"L1H0": 1.0, "L1H1": 0.0} for r in rows[:3])


def test_one_forward_pass_per_batch_of_prompts_serves_every_feature(setup):
    model, layout, sae = setup
    calls = []
    model.add_hook("hook_embed", lambda x, hook: calls.append(x.shape[0]))
    try:
        rows = InductionDetector().detect(model, sae, layout, pairs_per_sequence=4, gap=1, batch_size=4)
    finally:
        model.reset_hooks()
    n_tokens = len({row.evidence["token"] for row in rows})  # 7 distinct top tokens
    n_sequences = -(-n_tokens * 8 // 4)  # 8 prompts per token, 4 tests per sequence
    assert len(calls) == -(-n_sequences // 4) and sum(calls) == n_sequences


def test_controls_come_from_the_first_sequences_and_pairs_match_a_dense_comparison(setup):
    from sae_lens_attn.detectors.induction import _matching_pairs

    tested = torch.tensor([4, 9, 4, 1, 7])
    top = torch.tensor([9, 4, 3, 4, 1, 4])
    position, feature = _matching_pairs(tested, top)
    dense = (tested[:, None] == top[None, :]).nonzero()
    assert sorted(zip(position.tolist(), feature.tolist(), strict=True)) == sorted(map(tuple, dense.tolist()))

    model, layout, sae = setup
    rows = InductionDetector().detect(model, sae, layout, pairs_per_sequence=4, gap=1, n_control_sequences=1)
    for row in rows:  # one sequence of controls: its 4 first A's, and its 4 tests minus own token
        assert row.evidence["no_prev_tests"] == 4 and 3 <= row.evidence["other_tests"] <= 4
    assert {row.feature for row in rows if row.family == FAMILY} == set(INDUCTION)
