"""MMCS, split cosine and dictionary-size estimates against brute-force references."""

import math

import numpy as np
import pytest
import torch

from sae_lens_attn.toy import (
    dictionary_mmcs_matrix,
    estimate_from_dead_latents,
    estimate_from_dictionary_mmcs,
    max_cosine_per_feature,
    mmcs,
    split_cosine_per_feature,
)


def unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=1, keepdim=True)


def brute_force_mmcs(true: torch.Tensor, learned: torch.Tensor) -> float:
    scores = []
    for t in true.double().numpy():
        scores.append(max(float(t @ row / np.linalg.norm(t) / np.linalg.norm(row))
                          for row in learned.double().numpy()))
    return sum(scores) / len(scores)


def test_mmcs_matches_a_brute_force_loop():
    generator = torch.Generator().manual_seed(0)
    true, learned = torch.randn(20, 12, generator=generator), torch.randn(30, 12, generator=generator)
    assert mmcs(true, learned) == pytest.approx(brute_force_mmcs(true, learned), abs=1e-6)


def test_mmcs_is_one_for_a_shuffled_rescaled_superset_and_ignores_extra_rows():
    generator = torch.Generator().manual_seed(1)
    true = torch.randn(16, 8, generator=generator)
    learned = torch.cat([true[torch.randperm(16, generator=generator)] * 3.0, torch.randn(5, 8)])
    assert mmcs(true, learned) == pytest.approx(1.0, abs=1e-6)
    assert mmcs(true[:1], -true[:1]) == pytest.approx(-1.0)  # signed: anti-aligned is no recovery


def test_split_cosine_equals_the_least_squares_fit_of_the_best_slice_per_head():
    generator = torch.Generator().manual_seed(2)
    n_heads, d_head = 3, 5
    true = torch.randn(6, n_heads * d_head, generator=generator)
    learned = torch.randn(10, n_heads * d_head, generator=generator)
    closed_form = split_cosine_per_feature(true, learned, n_heads)
    for i, v in enumerate(true.double().numpy()):
        columns = []
        for h in range(n_heads):
            part = slice(h * d_head, (h + 1) * d_head)
            cosines = [v[part] @ row[part] / np.linalg.norm(v[part]) / np.linalg.norm(row[part])
                       for row in learned.double().numpy()]
            best = learned.double().numpy()[int(np.argmax(cosines)), part]
            column = np.zeros_like(v)
            column[part] = best if max(cosines) > 0 else 0.0
            columns.append(column)
        basis = np.stack(columns, axis=1)
        fit = basis @ np.linalg.lstsq(basis, v, rcond=None)[0]
        reference = fit @ v / np.linalg.norm(fit) / np.linalg.norm(v)
        assert float(closed_form[i]) == pytest.approx(reference, abs=1e-5)


def test_a_one_head_decoder_reaches_at_most_one_over_sqrt_k_on_a_k_head_feature():
    n_heads, d_head, k = 4, 6, 2
    generator = torch.Generator().manual_seed(3)
    feature = torch.zeros(1, n_heads, d_head)
    feature[0, :k] = unit(torch.randn(k, d_head, generator=generator)) / math.sqrt(k)
    feature = feature.flatten(1)
    block_decoder = torch.zeros(n_heads * 50, n_heads, d_head)
    for h in range(n_heads):  # block-diagonal: latent j lives in head j // 50 only
        block_decoder[h * 50:(h + 1) * 50, h] = torch.randn(50, d_head, generator=generator)
    block_decoder[0, 0] = feature[0, :d_head]  # one latent that is exactly the head-0 slice
    block_decoder = block_decoder.flatten(1)
    assert float(max_cosine_per_feature(feature, block_decoder)) == pytest.approx(1 / math.sqrt(k), abs=1e-6)
    block_decoder[50, d_head:2 * d_head] = feature[0, d_head:2 * d_head]
    assert float(split_cosine_per_feature(feature, block_decoder, n_heads)) == pytest.approx(1.0, abs=1e-6)


def test_dictionary_mmcs_matrix_has_unit_diagonal_and_reads_row_by_column():
    generator = torch.Generator().manual_seed(4)
    small = torch.randn(4, 6, generator=generator)
    large = torch.cat([small, torch.randn(4, 6, generator=generator)])
    matrix = dictionary_mmcs_matrix([small, large])
    assert torch.allclose(matrix.diagonal(), torch.ones(2), atol=1e-6)
    assert float(matrix[0, 1]) == pytest.approx(1.0, abs=1e-6)  # large holds every small row
    assert float(matrix[1, 0]) == pytest.approx(mmcs(large, small))
    assert float(matrix[1, 0]) < 1.0


def test_dead_latent_estimate_is_the_live_count_of_the_largest_dictionary():
    saturated = estimate_from_dead_latents([64, 128, 256], [64, 120, 130])
    assert (saturated.value, saturated.lower_bound, str(saturated)) == (130, False, "130")
    unsaturated = estimate_from_dead_latents([64, 128], [64, 126])
    assert (unsaturated.value, str(unsaturated)) == (126, ">= 126")


def test_dictionary_mmcs_estimate_is_the_first_size_that_reproduces_the_next():
    generator = torch.Generator().manual_seed(5)
    truth = unit(torch.randn(16, 32, generator=generator))
    duplicates = unit(truth + 0.05 * torch.randn(16, 32, generator=generator))
    dictionaries = [truth[:8], truth, torch.cat([truth, duplicates])]
    estimate = estimate_from_dictionary_mmcs([8, 16, 32], dictionary_mmcs_matrix(dictionaries))
    assert (estimate.value, estimate.lower_bound) == (16, False)
    growing = [truth[:4], truth[:8], truth]
    bound = estimate_from_dictionary_mmcs([4, 8, 16], dictionary_mmcs_matrix(growing))
    assert str(bound) == "> 8"


def test_estimates_refuse_inconsistent_inputs():
    with pytest.raises(ValueError, match="strictly increasing"):
        estimate_from_dictionary_mmcs([16, 8], torch.eye(2))
    with pytest.raises(ValueError, match=r"must be \[2, 2\]"):
        estimate_from_dictionary_mmcs([8, 16], torch.eye(3))
    with pytest.raises(ValueError, match="one live count per size"):
        estimate_from_dead_latents([8, 16], [8])
