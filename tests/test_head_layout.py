import pytest
import torch

from sae_lens_attn.sources.head_layout import HeadLayout, layer_of_hook_z


def test_select_equals_cache_rearranged_for_subset(tiny_model, tiny_tokens):
    _, cache = tiny_model.run_with_cache(tiny_tokens, names_filter="blocks.1.attn.hook_z")
    z = cache["blocks.1.attn.hook_z"]  # [batch, pos, n_heads, d_head]
    layout = HeadLayout.for_model(tiny_model, 1, heads=[3, 0])
    x = layout.select(z)
    assert x.shape == (*z.shape[:2], 2 * 16)
    torch.testing.assert_close(x[..., :16], z[:, :, 3])
    torch.testing.assert_close(x[..., 16:], z[:, :, 0])
    torch.testing.assert_close(layout.split(x)[..., 1, :], z[:, :, 0])


def test_round_trip_through_dict(tiny_model):
    layout = HeadLayout.for_model(tiny_model, 0, heads=[2, 1])
    assert HeadLayout.from_dict(layout.to_dict()) == layout
    assert layout.hook_name == "blocks.0.attn.hook_z"
    assert layout.slices == [slice(0, 16), slice(16, 32)]


@pytest.mark.parametrize(
    ("hook_name", "message"),
    [
        ("blocks.0.hook_resid_pre", "not an attention z hook; expected one of blocks.0.attn.hook_z .. blocks.1.attn.hook_z"),
        ("blocks.5.attn.hook_z", "layer 5 is out of range"),
    ],
)
def test_bad_hook_names_name_the_valid_ones(hook_name, message):
    with pytest.raises(ValueError, match=message):
        layer_of_hook_z(hook_name, n_layers=2)


def test_bad_heads_are_rejected(tiny_model):
    with pytest.raises(ValueError, match="valid heads are 0..3"):
        HeadLayout.for_model(tiny_model, 1, heads=[0, 4])
    with pytest.raises(ValueError, match="must not repeat"):
        HeadLayout.for_model(tiny_model, 1, heads=[1, 1])
    with pytest.raises(ValueError, match="layer 2 is out of range"):
        HeadLayout.for_model(tiny_model, 2)
