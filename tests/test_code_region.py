"""The code-region labeller against hand-written Python, and the `code_region` detector's
statistics against synthetic token streams where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_lens_attn.detectors.code_region import RegionThresholds, decide, region_statistics
from sae_lens_attn.detectors.region_stats import (
    _region_auc,
    _zero_one,
    rank_auc,
    region_auc,
    region_counts,
    token_scores,
)
from sae_lens_attn.models.code_regions import REGIONS, char_regions, token_regions

SNIPPET = '''"""Module doc."""
import os  # a comment

@decorator(x=1)
class A(Base):
    """Class doc."""
    x = 'str'

    def f(self):
        """Func doc."""
        return f"hi {self.x}"  # trailing


def g():
    y = "not a doc"
    return y
'''


def _texts(source: str, spans: list[tuple[int, int]]) -> list[str]:
    return [source[a:b] for a, b in spans]


def test_regions_of_a_hand_written_file():
    regions = char_regions(SNIPPET)
    assert _texts(SNIPPET, regions["docstring"]) == [
        '"""Module doc."""',
        '"""Class doc."""',
        '"""Func doc."""',
    ]
    assert _texts(SNIPPET, regions["comment"]) == ["# a comment", "# trailing"]
    assert _texts(SNIPPET, regions["string"]) == ["'str'", 'f"hi {self.x}"', '"not a doc"']
    assert _texts(SNIPPET, regions["decorator"]) == ["@decorator(x=1)"]
    [body] = _texts(SNIPPET, regions["class_body"])
    assert body.startswith('    """Class doc."""') and body.endswith("# trailing") is False
    assert body.endswith('return f"hi {self.x}"') and "def g" not in body


def test_class_open_at_end_of_file_and_nested_classes():
    source = "class A:\n    class B:\n        x = 1\n    y = 2\n"
    bodies = sorted(_texts(source, char_regions(source)["class_body"]), key=len)
    assert bodies == ["        x = 1", "    class B:\n        x = 1\n    y = 2"]


@pytest.mark.parametrize("source", ['x = """never closed\n', "if x:\n    y\n  z\n", "f(\n"])
def test_files_python_cannot_tokenize_have_no_regions(source):
    assert char_regions(source) is None


def test_token_regions_overlap_rule():
    source = "x = 1  # note\n"
    spans = char_regions(source)
    offsets = [
        (0, 1),
        (1, 3),
        (4, 5),
        (5, 8),
        (8, 13),
        (13, 14),
    ]  # "x", " =", "1", "  #", " note", "\n"
    labels = token_regions(offsets, spans, len(source))
    comment = labels[:, REGIONS.index("comment")]
    assert comment.tolist() == [False, False, False, True, True, False]
    assert not labels[:, REGIONS.index("string")].any()


def test_corpus_rows_align_with_the_training_rows():
    from sae_lens_attn.models.dataset import corpus_tokens
    from sae_lens_attn.models.embedded import load_embedded_tokenizer
    from sae_lens_attn.models.region_rows import corpus_region_rows

    tokenizer = load_embedded_tokenizer()
    rows = corpus_region_rows(tokenizer, 64, 8, "test")
    assert torch.equal(rows.tokens, corpus_tokens(tokenizer, 64, 8, "test"))
    assert not rows.known[:, 0].any()  # BOS
    assert rows.known.float().mean() > 0.9
    text = tokenizer.decode(rows.tokens[rows.regions[..., REGIONS.index("comment")]].tolist())
    assert "#" in text


def test_rank_auc_equals_a_pairwise_count():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (60, 3), generator=generator).double()  # many ties
    fires = torch.rand(60, 3, generator=generator) < 0.3
    for j in range(3):
        pos, neg = scores[fires[:, j], j], scores[~fires[:, j], j]
        diff = pos[:, None] - neg[None, :]
        expected = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean()
        assert rank_auc(scores, fires)[j].item() == pytest.approx(expected.item())
    member = scores[:, :1] > 1
    assert torch.allclose(
        region_auc(fires, member)[:, 0], rank_auc(member.double().expand(-1, 3), fires)
    )


def test_region_auc_counted_in_float32_equals_float64_counts_and_masked_positions():
    """The float32 products count exactly: bitwise equal to counting in float64, and the
    masked form (the shuffled control's) equal to gathering the positions first."""
    generator = torch.Generator().manual_seed(0)
    fires = torch.rand(3000, 40, generator=generator) < 0.1
    fires[:, 0] = False  # never fires
    fires[:, 1] = True  # always fires
    member = torch.rand(3000, 5, generator=generator) < 0.3
    where = torch.rand(3000, generator=generator) < 0.7

    def float64_auc(f, m):
        f64, m64 = f.double(), m.double()
        n_fire = f64.sum(dim=0)[:, None]
        n_silent = f.shape[0] - n_fire
        in_and_fire = f64.T @ m64
        auc = 0.5 * (1 + in_and_fire / n_fire.clamp_min(1) - (m64.sum(0) - in_and_fire) / n_silent.clamp_min(1))
        return torch.where((n_fire > 0) & (n_silent > 0), auc, 0.5)

    assert torch.equal(region_auc(fires, member), float64_auc(fires, member))
    masked = _region_auc(_zero_one(fires), member, where)
    assert torch.equal(masked, float64_auc(fires[where], member[where]))
    assert (masked[:2] == 0.5).all()
    assert torch.equal(region_counts(fires, member), fires.double().T @ member.double())


def _synthetic(seed: int = 0):
    """64 rows of 128 tokens (vocabulary 50) with docstring spans of 10-30 tokens, and five
    features with known answers."""
    generator = torch.Generator().manual_seed(seed)
    n, q = 64, 128
    tokens = torch.randint(0, 50, (n, q), generator=generator)
    doc = torch.zeros(n, q, dtype=torch.bool)
    for row in range(n):
        start = int(torch.randint(0, q - 30, (1,), generator=generator))
        doc[row, start : start + int(torch.randint(10, 30, (1,), generator=generator))] = True
    tokens[doc & (torch.rand(n, q, generator=generator) < 0.3)] = (
        7  # token 7 is mostly in docstrings
    )
    noise = torch.rand(n, q, 5, generator=generator)
    previous = torch.full_like(tokens, -1)
    previous[:, 1:] = tokens[:, :-1]
    fires = torch.stack(
        [
            doc & (noise[..., 0] < 0.9),  # 0: fires through docstrings (planted region feature)
            tokens == 7,  # 1: token-only, mostly inside docstrings
            (previous == 3) & (tokens == 4),  # 2: a bigram
            noise[..., 3] < 0.05,  # 3: random
            doc & (tokens == 11),  # 4: one token, only inside docstrings
        ],
        dim=2,
    )
    regions = torch.zeros(n, q, len(REGIONS), dtype=torch.bool)
    regions[..., REGIONS.index("docstring")] = doc
    regions[..., REGIONS.index("class_body")] = (
        torch.arange(q)[None, :] >= q // 2
    )  # an unrelated region
    known = torch.ones(n, q, dtype=torch.bool)
    known[:, 0] = False
    return tokens, fires, regions, known


def test_planted_docstring_feature_is_claimed_and_token_features_are_not():
    tokens, fires, regions, known = _synthetic()
    stats = region_statistics(fires, tokens, regions, known, n_shuffles=8)
    member, best, _ = decide(stats, RegionThresholds())
    assert member.tolist() == [True, False, False, False, False]
    assert REGIONS[int(best[0])] == "docstring"
    assert stats["auc"][0, REGIONS.index("docstring")] > 0.9
    assert stats["token_auc"][1] > 0.95  # the token-only control explains the token feature
    assert stats["token_auc"][2] > 0.95  # and the bigram
    # the region adds nothing to them (splitting a rare pair's counts by region can only cost)
    assert stats["gain"][1] < 0.02 and stats["gain"][2] < 0.02
    assert stats["gain"][0] > 0.2  # the region adds much to the tokens for the planted feature


def test_token_statistics_only_where_the_region_tests_pass_with_the_same_claims():
    tokens, fires, regions, known = _synthetic()
    thresholds = RegionThresholds()
    full = region_statistics(fires, tokens, regions, known, n_shuffles=8)
    gated = region_statistics(fires, tokens, regions, known, n_shuffles=8, thresholds=thresholds)
    tested = ~gated["token_auc"].isnan()
    assert tested[0] and not tested[3]  # the planted feature is tested, the random one not
    assert torch.equal(gated["token_auc"][tested], full["token_auc"][tested])
    assert torch.equal(gated["gain"][tested], full["gain"][tested])
    for name in ("auc", "shuffled_auc", "precision", "coverage", "fires"):
        assert torch.equal(gated[name], full[name])
    assert torch.equal(decide(gated, thresholds)[0], decide(full, thresholds)[0])
    # untested margins are over the shuffled control alone, an upper bound of the full one
    assert (decide(gated, thresholds)[2] >= decide(full, thresholds)[2] - 1e-12).all()


def test_claims_hold_at_another_seed_and_on_a_shuffled_region():
    tokens, fires, regions, known = _synthetic(seed=1)
    member, _, _ = decide(region_statistics(fires, tokens, regions, known, 8), RegionThresholds())
    assert member.tolist() == [True, False, False, False, False]
    shuffled = regions[torch.randperm(regions.shape[0], generator=torch.Generator().manual_seed(0))]
    member, _, _ = decide(region_statistics(fires, tokens, shuffled, known, 8), RegionThresholds())
    assert not member.any()


def test_token_scores_never_see_their_own_row():
    tokens = torch.zeros(4, 3, dtype=torch.long)
    fires = torch.zeros(4, 3, 1, dtype=torch.bool)
    fires[0] = True  # fires only in row 0: its fold (even rows) must not predict it from itself
    scores = token_scores(tokens, fires)
    assert scores[0].max() < scores[1].min()  # row 1 is scored from row 0 and 2
    assert np.isclose(scores[2, 1, 0].item(), scores[0, 1, 0].item())


def test_detector_runs_on_a_model_and_reports_missing_labels(tiny_model, tiny_tokens):
    from sae_lens import StandardSAE, StandardSAEConfig

    from sae_lens_attn.plugins import get_plugin_manager
    from sae_lens_attn.sources.head_layout import HeadLayout

    layout = HeadLayout.for_model(tiny_model, 1)
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=layout.d_in, d_sae=32))
    layout.store_in(sae)
    detector = get_plugin_manager().get("detector", "code_region")
    regions = torch.zeros(*tiny_tokens.shape, len(REGIONS), dtype=torch.bool)
    regions[:, 10:20, 0] = True
    rows = detector.detect(tiny_model, sae, tokens=tiny_tokens, regions=regions)
    assert [row.feature for row in rows] == list(range(32))
    assert all(row.detector == "code_region" and row.evidence["summary"] for row in rows)
    unlabelled = detector.detect(tiny_model, sae, tokens=tiny_tokens, features=[0, 1])
    assert len(unlabelled) == 2
    assert all(row.family is None for row in unlabelled)
