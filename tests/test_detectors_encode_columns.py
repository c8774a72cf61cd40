"""`encode_hook_z_columns`: a few features' activations without encoding every feature,
checked against the full `encode_hook_z` of SAELens's own SAEs."""

from __future__ import annotations

import pytest
import torch
from sae_lens import (
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)

from sae_lens_attn.architectures.block_diagonal import BlockDiagonalSAE, BlockDiagonalSAEConfig
from sae_lens_attn.detectors.base import encode_hook_z, encode_hook_z_columns
from sae_lens_attn.sources.head_layout import HeadLayout

N_HEADS, D_HEAD, D_SAE = 2, 4, 24
LAYOUT = HeadLayout(layer=1, heads=(0, 1), d_head=D_HEAD, n_model_heads=N_HEADS)
COLUMNS = torch.tensor([17, 3, 3, 0, 23])  # any order, repeats allowed


def randomized(sae):
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in sae.named_parameters():
            parameter.normal_()
            if name == "threshold":
                parameter.abs_()
    LAYOUT.store_in(sae)
    return sae


def independent_saes():
    common = {"d_in": N_HEADS * D_HEAD, "d_sae": D_SAE}
    return [
        randomized(StandardSAE(StandardSAEConfig(**common))),
        randomized(JumpReLUSAE(JumpReLUSAEConfig(**common))),
        randomized(GatedSAE(GatedSAEConfig(**common))),
    ]


@pytest.mark.parametrize("index", range(3), ids=["standard", "jumprelu", "gated"])
def test_independent_features_are_encoded_alone_and_equal_the_full_encode(index):
    sae = independent_saes()[index]
    x = torch.randn(5, 3, N_HEADS * D_HEAD)
    weights_before = {name: (p, p.detach().clone()) for name, p in sae.named_parameters()}
    seen = []
    sae.hook_sae_acts_pre.add_hook(lambda acts, hook: seen.append(acts.shape[-1]))
    columns = encode_hook_z_columns(sae, x, LAYOUT, COLUMNS)
    sae.hook_sae_acts_pre.remove_hooks()

    assert seen == [len(COLUMNS)]  # only the asked-for pre-activations were computed
    torch.testing.assert_close(columns, encode_hook_z(sae, x, LAYOUT)[..., COLUMNS], rtol=1e-5, atol=1e-5)
    assert (columns > 0).any() and (columns == 0).any()  # a real mix of firing and not
    for name, parameter in sae.named_parameters():  # the SAE itself is untouched
        original, values = weights_before[name]
        assert parameter is original and torch.equal(parameter, values)


@pytest.mark.parametrize("kind", ["topk", "block_diagonal"])
def test_saes_whose_features_depend_on_each_other_encode_everything_and_select(kind):
    common = {"d_in": N_HEADS * D_HEAD, "d_sae": D_SAE}
    if kind == "topk":
        sae = randomized(TopKSAE(TopKSAEConfig(k=3, **common)))
    else:
        sae = randomized(BlockDiagonalSAE(BlockDiagonalSAEConfig(n_heads=N_HEADS, activation="topk", k=2, **common)))
    x = torch.randn(5, N_HEADS * D_HEAD)
    seen = []
    sae.hook_sae_acts_post.add_hook(lambda acts, hook: seen.append(acts.shape[-1]))
    columns = encode_hook_z_columns(sae, x, LAYOUT, COLUMNS)
    sae.hook_sae_acts_post.remove_hooks()
    assert seen == [D_SAE]
    torch.testing.assert_close(columns, encode_hook_z(sae, x, LAYOUT)[..., COLUMNS])
