"""Per-head evals against independent references: numpy explained variance, SAELens's
own evals on a one-head model, a perfect and a zero reconstruction, a hand-written
zero-ablation hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.evals import ExplainedVarianceCalculator

from sae_lens_attn.attribution.head_evals import (
    evaluate_heads,
    head_dead_share,
    head_explained_variance,
    head_l0,
    sae_feature_heads,
    splice_head,
)
from sae_lens_attn.sources.head_layout import HeadLayout
from tests.conftest import make_tiny_model


def _sae(layout: HeadLayout, d_sae: int = 32, seed: int = 0) -> StandardSAE:
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=layout.d_in, d_sae=d_sae))
    layout.store_in(sae)
    return sae


def _perfect_sae(layout: HeadLayout) -> StandardSAE:
    """relu(x) - relu(-x) = x: decode(encode(x)) is exactly x."""
    sae = _sae(layout, d_sae=2 * layout.d_in)
    eye = torch.eye(layout.d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_explained_variance_per_head_equals_numpy():
    generator = torch.Generator().manual_seed(0)
    x = (
        torch.randn(200, 3 * 4, generator=generator)
        * torch.tensor([1.0, 3.0, 0.5]).repeat_interleave(4)
        + 2
    )
    x_hat = x + 0.3 * torch.randn(x.shape, generator=generator)
    ev = head_explained_variance(x, x_hat, 3)
    xs, hs = x.numpy().astype(np.float64), x_hat.numpy().astype(np.float64)
    for h in range(3):
        part, part_hat = xs[:, 4 * h : 4 * h + 4], hs[:, 4 * h : 4 * h + 4]
        expected = 1 - ((part - part_hat) ** 2).sum() / ((part - part.mean(axis=0)) ** 2).sum()
        assert ev[h].item() == pytest.approx(expected, rel=1e-6)


def test_heads_of_equal_variance_average_to_saelens_overall_explained_variance():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(500, 4 * 8, generator=generator)
    x = (x - x.mean(0)) / x.std(0, unbiased=False)  # every head exactly the same variance
    x_hat = x * torch.linspace(0.2, 1.0, 4).repeat_interleave(8)  # heads reconstructed differently
    overall = ExplainedVarianceCalculator()
    overall.add_batch(sae_output=x_hat, hidden_acts=x)
    per_head = head_explained_variance(x, x_hat, 4)
    assert per_head.mean().item() == pytest.approx(overall.compute(), abs=1e-5)
    assert per_head.std() > 0.1


def test_l0_and_dead_share_by_owning_head():
    active = torch.tensor([[1, 1, 0, 0, 1, 0], [0, 1, 0, 0, 1, 1]], dtype=torch.bool)
    owner = torch.tensor([0, 0, 1, 1, 2, 2])
    assert head_l0(active, owner, 3).tolist() == [1.5, 0.0, 1.5]
    assert head_l0(active, owner, 3).sum().item() == active.sum(dim=1).double().mean().item()
    fire_counts = active.sum(dim=0)
    assert head_dead_share(fire_counts, owner, 3).tolist() == [0.0, 1.0, 0.0]


def test_block_diagonal_features_belong_to_their_block_even_when_dead():
    from sae_lens_attn.architectures.block_diagonal import BlockDiagonalSAE, BlockDiagonalSAEConfig

    sae = BlockDiagonalSAE(BlockDiagonalSAEConfig(d_in=64, d_sae=32, n_heads=4))
    with torch.no_grad():
        sae.W_dec_blocks[1, 2] = 0.0  # a zero decoder row in head 1's block
    assert sae_feature_heads(sae, 4).tolist() == [h for h in range(4) for _ in range(8)]


def test_splice_changes_one_head_only():
    z = torch.randn(2, 5, 4, 3)
    out = splice_head(z, 2, torch.ones(2, 5, 3))
    assert torch.equal(out[:, :, [0, 1, 3]], z[:, :, [0, 1, 3]]) and torch.equal(
        out[:, :, 2], torch.ones(2, 5, 3)
    )
    assert torch.equal(splice_head(z, 1, None)[:, :, 1], torch.zeros(2, 5, 3))


def test_perfect_reconstruction_recovers_everything(tiny_model, tiny_tokens):
    layout = HeadLayout.for_model(tiny_model, 1)
    evals = evaluate_heads(tiny_model, _perfect_sae(layout), layout, tiny_tokens, batch_size=3)
    assert torch.allclose(evals.explained_variance, torch.ones(4, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(evals.ce_loss_recovered, torch.ones(4, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(
        evals.ce_loss_with_sae,
        torch.full((4,), evals.ce_loss_without_sae, dtype=torch.float64),
        atol=1e-5,
    )


def test_zero_reconstruction_equals_zero_ablation_of_that_head(tiny_model, tiny_tokens):
    layout = HeadLayout.for_model(tiny_model, 0)
    sae = _sae(layout)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    evals = evaluate_heads(tiny_model, sae, layout, tiny_tokens)
    assert torch.allclose(evals.ce_loss_with_sae, evals.ce_loss_with_ablation, atol=1e-6)
    assert torch.allclose(evals.ce_loss_recovered, torch.zeros(4, dtype=torch.float64), atol=1e-5)

    def zero_head_two(z, hook):  # an independent zero-ablation of head 2
        z = z.clone()
        z[:, :, 2] = 0
        return z

    logits = tiny_model.run_with_hooks(
        tiny_tokens, fwd_hooks=[("blocks.0.attn.hook_z", zero_head_two)]
    )
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), tiny_tokens[:, 1:].flatten()
    )
    assert evals.ce_loss_with_ablation[2].item() == pytest.approx(expected.item(), rel=1e-5)


def test_one_head_model_matches_saelens_evals():
    from sae_lens_attn.training.evaluation import evaluate_hook_z_sae

    model = make_tiny_model(n_heads=1, d_head=64)
    layout = HeadLayout.for_model(model, 1)
    sae = _sae(layout, d_sae=128, seed=3)
    sae.cfg.metadata.prepend_bos = False  # the rows are used as given
    tokens = torch.randint(0, 101, (8, 32), generator=torch.Generator().manual_seed(2))
    ours = evaluate_heads(model, sae, layout, tokens, batch_size=4)
    theirs = evaluate_hook_z_sae(
        sae, model, tokens, n_batches=2, batch_size_prompts=4, context_size=32
    )
    assert ours.explained_variance[0].item() == pytest.approx(
        theirs["explained_variance"], abs=1e-4
    )
    assert ours.ce_loss_without_sae == pytest.approx(theirs["ce_loss_without_sae"], rel=1e-5)
    assert ours.ce_loss_with_sae[0].item() == pytest.approx(theirs["ce_loss_with_sae"], rel=1e-5)
    assert ours.ce_loss_with_ablation[0].item() == pytest.approx(
        theirs["ce_loss_with_ablation"], rel=1e-5
    )
    # a random model barely needs its head: the score divides by a tiny difference
    assert ours.ce_loss_recovered[0].item() == pytest.approx(theirs["ce_loss_score"], rel=1e-3)
    assert ours.l0[0].item() == pytest.approx(theirs["l0"], abs=1e-4)


def test_head_subset_sae_and_flat_metrics(tiny_model, tiny_tokens):
    layout = HeadLayout.for_model(tiny_model, 1, heads=[3, 1])
    sae = _perfect_sae(layout)
    evals = evaluate_heads(tiny_model, sae, layout, tiny_tokens)
    assert evals.labels == ["L1H3", "L1H1"]
    metrics = evals.metrics()
    assert set(metrics) == {
        f"{h}/{m}"
        for h in ("L1H3", "L1H1")
        for m in ("explained_variance", "ce_loss_recovered", "l0", "dead_share")
    }
    assert metrics["L1H1/ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert sum(v["features"] for v in evals.to_dict().values()) == sae.cfg.d_sae


def test_a_head_whose_ablation_changes_nothing_has_no_ce_loss_recovered():
    from sae_lens_attn.attribution.head_evals import HeadEvals, ce_loss_recovered, head_evals_rows

    same = torch.tensor([2.0, 2.0], dtype=torch.float64)
    evals = HeadEvals(
        ["L0H0", "L0H1"],
        torch.tensor([0.9, 0.8]),
        torch.tensor([2.0, 2.5]),
        torch.tensor([2.0, 3.0]),
        2.0,
        ce_loss_recovered(same, torch.tensor([2.0, 2.5]), torch.tensor([2.0, 3.0])),
        torch.tensor([1.0, 2.0]),
        torch.tensor([0.0, 0.5]),
        torch.tensor([4, 4]),
        10,
        10,
    )
    table = evals.to_dict()
    assert table["L0H0"]["ce_loss_recovered"] is None and table["L0H1"]["ce_loss_recovered"] == 0.5
    assert (
        "L0H0/ce_loss_recovered" not in evals.metrics()
        and "L0H1/ce_loss_recovered" in evals.metrics()
    )
    rows, header = head_evals_rows(table)
    assert rows[0][2] == "n/a" and rows[1][2] == "0.500"
    assert header[4] == "not seen in 10 tok"  # 10 tokens cannot call a feature dead


@pytest.mark.parametrize("positional", ["standard", "shortformer", "rotary"])
def test_passes_from_the_layer_equal_full_passes(positional):
    """The clean, spliced and ablated passes start at the layer's residual stream; each
    equals a full forward pass with an independent hook, whatever the position embedding
    (shortformer models add it to every layer's attention input, rotary ones inside it)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=53, n_ctx=16,
        act_fn="gelu", normalization_type="LN", positional_embedding_type=positional, seed=1,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    tokens = torch.randint(0, 53, (6, 16), generator=torch.Generator().manual_seed(4))
    layout = HeadLayout.for_model(model, 2)
    sae = _sae(layout, d_sae=64, seed=5)
    evals = evaluate_heads(model, sae, layout, tokens, batch_size=4)

    def loss_with(head, replacement):
        def hook_fn(z, hook):
            z = z.clone()
            z[:, :, head] = replacement
            return z

        logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.2.attn.hook_z", hook_fn)])
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()
        ).item()

    clean = model(tokens, return_type="loss").item()
    z = model.run_with_cache(tokens, names_filter="blocks.2.attn.hook_z")[1]["blocks.2.attn.hook_z"]
    x_hat = sae.decode(sae.encode(z.flatten(-2))).view_as(z).detach()
    assert evals.ce_loss_without_sae == pytest.approx(clean, rel=1e-5)
    for head in range(4):
        assert evals.ce_loss_with_ablation[head].item() == pytest.approx(loss_with(head, 0.0), rel=1e-5)
        assert evals.ce_loss_with_sae[head].item() == pytest.approx(
            loss_with(head, x_hat[:, :, head]), rel=1e-5
        )
