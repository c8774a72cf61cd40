"""Head attribution: per-head norm fractions, against sae_dashboard's own decoder shares."""

from __future__ import annotations

import pytest
import torch
from sae_dashboard.sae_vis_runner import get_decoder_weights_distribution
from sae_lens import StandardSAE, StandardSAEConfig

from sae_lens_attn.architectures.block_diagonal import BlockDiagonalSAE, BlockDiagonalSAEConfig
from sae_lens_attn.attribution import (
    decoder_head_attribution,
    encoder_head_attribution,
    sae_head_attribution,
)


@pytest.fixture(scope="module")
def dense_sae() -> StandardSAE:
    sae = StandardSAE(StandardSAEConfig(d_in=64, d_sae=12)).requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(12, 64, generator=generator))
        sae.W_enc.copy_(torch.randn(64, 12, generator=generator))
    return sae


def test_decoder_head_attribution_equals_sae_dashboard_decoder_weights(tiny_model, dense_sae):
    ours = decoder_head_attribution(dense_sae.W_dec.detach(), n_heads=4)
    for feature in range(12):
        (theirs,) = get_decoder_weights_distribution(dense_sae, tiny_model, feature)
        torch.testing.assert_close(ours[feature], torch.tensor(theirs.allocation_by_head))
    torch.testing.assert_close(ours.sum(dim=1), torch.ones(12))


def test_encoder_head_attribution_is_the_norm_fraction_of_encoder_columns(dense_sae):
    W_enc = dense_sae.W_enc.detach()
    ours = encoder_head_attribution(W_enc, n_heads=4)
    norms = torch.stack([W_enc[h * 16 : (h + 1) * 16].norm(dim=0) for h in range(4)], dim=1)
    torch.testing.assert_close(ours, norms / norms.sum(dim=1, keepdim=True))
    torch.testing.assert_close(sae_head_attribution(dense_sae, 4, [3, 5], side="encoder"), ours[[3, 5]])


def test_feature_living_in_one_head_is_one_hot_and_zero_rows_stay_zero():
    W_dec = torch.zeros(3, 8)
    W_dec[0, 4:6] = torch.tensor([3.0, 4.0])  # only head 2 of 4
    W_dec[1] = 1.0
    out = decoder_head_attribution(W_dec, n_heads=4)
    assert out[0].tolist() == [0.0, 0.0, 1.0, 0.0]
    torch.testing.assert_close(out[1], torch.full((4,), 0.25))
    assert out[2].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_block_diagonal_attribution_is_one_hot_and_equals_its_dense_copy():
    sae = BlockDiagonalSAE(BlockDiagonalSAEConfig(d_in=64, d_sae=32, n_heads=4))
    with torch.no_grad():
        sae.W_dec_blocks[1, 3] = 0.0  # a dead feature (head 1, feature 8 + 3) keeps a zero row
    dense = sae.to_dense_sae()
    for side, weight in (("decoder", dense.W_dec), ("encoder", dense.W_enc)):
        ours = sae_head_attribution(sae, 4, side=side)
        reference = (decoder_head_attribution(weight, 4) if side == "decoder"
                     else encoder_head_attribution(weight, 4))
        torch.testing.assert_close(ours, reference)
    ours = sae_head_attribution(sae, 4, [0, 11, 31])
    assert ours.tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]


def test_head_attribution_rejects_widths_that_are_not_a_multiple_of_heads():
    with pytest.raises(ValueError, match="multiple of n_heads=3"):
        decoder_head_attribution(torch.zeros(2, 8), n_heads=3)
    with pytest.raises(ValueError, match="side must be"):
        sae_head_attribution(StandardSAE(StandardSAEConfig(d_in=8, d_sae=2)), 2, side="both")
