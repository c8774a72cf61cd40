"""Token set enrichment: equal to SAELens's tutorial tsea, to scipy's KS test, and BH."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from sae_lens_attn.detectors.token_sets import (
    builtin_token_sets,
    nltk_pos_token_sets,
    nltk_tagger_status,
    regex_token_sets,
    token_sets_for_model,
)
from sae_lens_attn.detectors.tsea import (
    enrichment_scores,
    ks_pvalues,
    permutation_null,
    permutation_pvalues,
    token_set_enrichment,
)

VOCAB = 600


def _weights_and_sets(seed: int = 0):
    """Random logit weights where some rows really promote / suppress set 0."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(12, VOCAB, generator=generator)
    perm = torch.randperm(VOCAB, generator=generator)
    sets = [perm[:40], perm[40:45], perm[45:380], perm[380:381]]  # 40, 5, 335 (> V/2 side), 1
    weights[:4, sets[0]] += 1.5  # promoted
    weights[4:6, sets[0]] -= 1.5  # suppressed
    return weights, sets


def test_enrichment_scores_equal_sae_lens_tutorial_calculate_batch_enrichment_scores():
    from sae_lens.tutorial.tsea import calculate_batch_enrichment_scores, pad_gene_sets

    weights, sets = _weights_and_sets()
    padded = pad_gene_sets({str(j): set(s.tolist()) for j, s in enumerate(sets)})
    reference = calculate_batch_enrichment_scores(weights, torch.tensor(list(padded.values())))
    es, _ = enrichment_scores(weights, sets)
    torch.testing.assert_close(es, reference.T.double(), atol=1e-5, rtol=0)
    assert es[:6, 0].min() > 0.5  # the planted enrichment is really there


def test_enrichment_scores_equal_scipy_ks_statistic_with_ties_and_give_its_sign():
    weights, sets = _weights_and_sets(seed=1)
    weights = (weights * 2).round() / 2  # many tied weights
    es, direction = enrichment_scores(weights, sets)
    for i in range(weights.shape[0]):
        for j, members in enumerate(sets):
            inside = torch.zeros(VOCAB, dtype=torch.bool)
            inside[members] = True
            ks = scipy.stats.ks_2samp(weights[i, inside].numpy(), weights[i, ~inside].numpy())
            assert es[i, j].item() == pytest.approx(ks.statistic, abs=1e-9)
            if ks.statistic > 0:  # cdf(set) > cdf(rest) means the set sits low: suppressed
                assert direction[i, j].item() == -ks.statistic_sign
    assert (direction[:4, 0] == 1).all() and (direction[4:6, 0] == -1).all()


def test_ks_pvalues_match_scipy_exact_two_sample_ks_pvalues():
    weights, sets = _weights_and_sets(seed=2)
    es, _ = enrichment_scores(weights, sets[:3])
    p = ks_pvalues(es, [len(s) for s in sets[:3]], VOCAB)
    for i in range(weights.shape[0]):
        for j, members in enumerate(sets[:3]):
            inside = torch.zeros(VOCAB, dtype=torch.bool)
            inside[members] = True
            reference = scipy.stats.ks_2samp(
                weights[i, inside].numpy(), weights[i, ~inside].numpy(), method="exact"
            ).pvalue
            # an asymptotic formula: about as close to exact as scipy's own method="asymp"
            if reference > 1e-6:
                assert p[i, j].item() == pytest.approx(reference, rel=0.12)
            else:  # far tail: the same order of magnitude
                assert abs(np.log10(p[i, j].item() / reference)) < 1
    assert p[:6, 0].max() < 1e-6 and p[6:, 0].min() > 1e-3


def test_permutation_pvalues_agree_with_ks_pvalues_and_are_floored_at_one_over_n_plus_one():
    weights, sets = _weights_and_sets(seed=3)
    es, _ = enrichment_scores(weights, sets[:3])
    nulls = [permutation_null(len(s), VOCAB, n_permutations=2000, seed=0) for s in sets[:3]]
    p_perm = permutation_pvalues(es, nulls)
    p_ks = ks_pvalues(es, [len(s) for s in sets[:3]], VOCAB)
    np.testing.assert_allclose(p_perm[6:], p_ks[6:], atol=0.05)
    assert torch.equal(p_perm[:6, 0], torch.full((6,), 1 / 2001, dtype=torch.float64))


def test_token_set_enrichment_is_chunk_independent_and_bh_adjusts_across_features_and_sets():
    generator = torch.Generator().manual_seed(4)
    directions = torch.randn(10, 16, generator=generator)
    W_U = torch.randn(16, VOCAB, generator=generator)
    sets = {"a": list(range(0, 30)), "b": list(range(100, 400)), "c": [7, 8, 9]}
    result = token_set_enrichment(directions, W_U, sets, chunk_size=3)
    es, direction = enrichment_scores(directions @ W_U, list(sets.values()))
    torch.testing.assert_close(result.es, es)
    assert torch.equal(result.direction, direction)
    q = scipy.stats.false_discovery_control(result.p.numpy().ravel(), method="bh")
    np.testing.assert_allclose(result.q.numpy().ravel(), q)
    assert result.set_names == ["a", "b", "c"]


@pytest.mark.parametrize(
    "sets, message",
    [([[]], "needs between 1 and"), ([list(range(VOCAB))], "needs between 1 and"), ([[VOCAB]], "outside")],
)
def test_bad_token_sets_raise_value_errors(sets, message):
    with pytest.raises(ValueError, match=message):
        enrichment_scores(torch.randn(2, VOCAB), sets)


class _FakeTokenizer:
    def __init__(self, strings):
        self.strings = strings

    def __len__(self):
        return len(self.strings)

    def batch_decode(self, ids, clean_up_tokenization_spaces=False):
        return [self.strings[i[0]] for i in ids]


STRINGS = [" the", "The", " NASA", "42", " 7", "!?", ".", "cat", " Paris", "A", "x1"]


def test_builtin_token_sets_classify_decoded_tokens():
    sets = builtin_token_sets(STRINGS)
    assert sets == {
        "starts_with_space": [0, 2, 4, 8],
        "capitalised": [1, 2, 8, 9],
        "all_caps": [2],
        "digits": [3, 4],
        "punctuation": [5, 6],
    }
    assert regex_token_sets(STRINGS, {"has_digit": r".*\d"}) == {"has_digit": [3, 4, 10]}
    with pytest.raises(ValueError, match="bad regular expression"):
        regex_token_sets(STRINGS, {"bad": "("})


def test_missing_nltk_tagger_data_is_said_clearly_and_pos_sets_are_skipped(monkeypatch):
    import nltk

    def not_found(resource):
        raise LookupError(resource)

    monkeypatch.setattr(nltk.data, "find", not_found)
    available, message = nltk_tagger_status()
    assert not available and "not installed" in message and "skipped" in message

    model = type("M", (), {"tokenizer": _FakeTokenizer(STRINGS), "W_U": torch.zeros(3, 12)})()
    sets, notes = token_sets_for_model(model)
    assert notes == [message] and not any(name.startswith("nltk_pos") for name in sets)
    with pytest.raises(ValueError, match="not installed"):
        nltk_pos_token_sets(STRINGS)


def test_pos_sets_tag_each_stripped_token_when_the_tagger_data_is_present(monkeypatch):
    import nltk

    monkeypatch.setattr(nltk.data, "find", lambda resource: resource)
    monkeypatch.setattr(
        nltk, "pos_tag_sents", lambda sents: [[(s[0], "CD" if s[0].isdigit() else "NN")] for s in sents]
    )
    sets = nltk_pos_token_sets(STRINGS)
    assert sets["nltk_pos_CD"] == [3, 4] and 0 in sets["nltk_pos_NN"]
