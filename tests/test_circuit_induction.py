"""Circuit of "<t> is next by induction" features: the top value-side source is the token
after the earlier occurrence, and the direct effect promotes that token.

The model is a hand-built 2-layer attention-only induction circuit (a previous-token head
in layer 0 writes the previous token into its own subspace; the layer-1 head's key reads it,
its query reads the current token, its value copies the source token, W_U reads the copy),
so the claim is checked on a model where the right answer is known by construction. The
SAE on layer 1's hook_z has one feature per token ("this token was copied"); the induction
features are the ones the induction detector (engineer D) finds, not picked by hand.
"""

from __future__ import annotations

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_lens_attn.attribution.circuit import feature_circuit
from sae_lens_attn.detectors.induction import FAMILY, InductionDetector
from sae_lens_attn.detectors.induction_prompts import induction_prompts

VOCAB, N_CTX, D_HEAD = 40, 48, 48
TOK, POS, PREV, OUT = 0, VOCAB, VOCAB + N_CTX, 2 * VOCAB + N_CTX  # residual subspaces
SHARP = 10.0  # query/key scale: attention ~0.998 on the matching source


def induction_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=3 * VOCAB + N_CTX, n_heads=1, d_head=D_HEAD, d_vocab=VOCAB,
        n_ctx=N_CTX, attn_only=True, normalization_type=None, act_fn=None, device="cpu",
    )
    model = HookedTransformer(cfg)
    tokens, positions = torch.arange(VOCAB), torch.arange(N_CTX)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.embed.W_E[tokens, TOK + tokens] = 1.0
        model.pos_embed.W_pos[positions, POS + positions] = 1.0
        prev, ind = model.blocks[0].attn, model.blocks[1].attn
        # layer 0: position i attends to i - 1 and writes that token into PREV
        prev.W_Q[0, POS + positions, positions] = SHARP
        prev.W_K[0, POS + positions[:-1], positions[1:]] = SHARP
        prev.W_V[0, TOK + tokens, tokens] = 1.0
        prev.W_O[0, tokens, PREV + tokens] = 1.0
        # layer 1: attend where the previous token is the current one, copy that token
        ind.W_Q[0, TOK + tokens, tokens] = SHARP
        ind.W_K[0, PREV + tokens, tokens] = SHARP
        ind.W_V[0, TOK + tokens, tokens] = 1.0
        ind.W_O[0, tokens, OUT + tokens] = 1.0
        model.unembed.W_U[OUT + tokens, tokens] = 5.0
    return model.eval()


def copy_feature_sae() -> StandardSAE:
    """Feature t fires (activation ~0.5) when the layer-1 head copies token t."""
    sae = StandardSAE(
        StandardSAEConfig(
            d_in=D_HEAD, d_sae=VOCAB, metadata=SAEMetadata(hook_name="blocks.1.attn.hook_z")
        )
    )
    with torch.no_grad():
        for param in sae.parameters():
            param.zero_()
        sae.W_enc[torch.arange(VOCAB), torch.arange(VOCAB)] = 1.0
        sae.W_dec[torch.arange(VOCAB), torch.arange(VOCAB)] = 1.0
        sae.b_enc.fill_(-0.5)
    return sae


@pytest.fixture(scope="module")
def induction_members():
    model, sae = induction_model(), copy_feature_sae()
    rows = InductionDetector().detect(model, sae)
    members = [row for row in rows if row.family == FAMILY]
    return model, sae, members


def test_induction_feature_reads_the_token_after_the_earlier_occurrence_and_promotes_it(
    induction_members,
):
    model, sae, members = induction_members
    assert len(members) >= VOCAB // 2  # the detector finds the copy features
    pool = torch.arange(VOCAB)
    for row in members[:6]:
        token = row.evidence["token"]
        prompts = induction_prompts(
            torch.full((2,), token), pool[pool != token], n_prompts=1, pairs_per_sequence=1,
            gap=3, seed=row.feature,
        )
        for tokens, dest, first in zip(
            prompts.tokens, prompts.test_positions[:, 0], prompts.first_positions[:, 0], strict=True
        ):
            circuit = feature_circuit(model, sae, tokens, row.feature, destination=int(dest))
            assert circuit.activation > 0.4
            # value side: the top source is the predicted token, after the earlier A, and
            # what it contributes there is its token embedding (copied through W_V)
            assert circuit.top_sources[0] == int(first) + 1
            value = circuit.value
            at_t = value.terms[:, int(first) + 1].sum(-1)
            assert value.labels[int(at_t.argmax())] == "embed"
            # query/key side: the previous-token head's output at t (K-composition) and the
            # current token's embedding at the destination raise the score
            qk = circuit.query_key
            assert qk.key_labels[int(qk.key_totals.argmax())] == "L0H0"
            assert qk.query_labels[int(qk.query_totals.argmax())] == "embed"
            # downstream: the direct effect promotes t most; the layer is the last one
            effect = circuit.downstream
            assert int(effect.direct[int(dest)].argmax()) == token
            torch.testing.assert_close(effect.total, effect.direct, atol=1e-4, rtol=1e-4)
