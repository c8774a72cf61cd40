"""Data-driven initialisation: b_dec from the mean or geometric median per head, decoder
rows in each head's active subspace, encoder = decoder transpose; checked against scipy,
numpy's eigendecomposition and hand-made low-rank data."""

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.optimize
import torch
from sae_lens import (
    SAE,
    JumpReLUTrainingSAE,
    JumpReLUTrainingSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TopKTrainingSAE,
    TopKTrainingSAEConfig,
)

from sae_lens_attn.architectures.block_diagonal import (
    BlockDiagonalTrainingSAE,
    BlockDiagonalTrainingSAEConfig,
)
from sae_lens_attn.architectures.data_init import (
    SAEInit,
    geometric_median,
    initialise_from_sample,
    principal_subspace,
    spherical_kmeans,
)
from sae_lens_attn.cli import main
from sae_lens_attn.training import train_hook_z_sae
from sae_lens_attn.training.initialisation import initialise_training_sae
from tests.test_training_cli import REDUCED, tiny_embedded  # noqa: F401 (a fixture)

N_HEADS, D_HEAD, RANK = 4, 8, 3


def block_sae(activation="relu"):
    k = {"k": 2} if activation == "topk" else {}
    cfg = BlockDiagonalTrainingSAEConfig(
        d_in=N_HEADS * D_HEAD, d_sae=64, n_heads=N_HEADS, activation=activation, **k
    )
    torch.manual_seed(0)
    return BlockDiagonalTrainingSAE(cfg)


def low_rank_sample(n=600, seed=0):
    """`[n, H * d_head]`: head h lives in its own random RANK-dim subspace, offset by a
    per-head mean, plus a skewed (non-Gaussian) spread so mean and median differ."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for _ in range(N_HEADS):
        basis = torch.linalg.qr(torch.randn(D_HEAD, RANK, generator=g))[0]
        coefficients = torch.randn(n, RANK, generator=g).exp()  # log-normal: skewed
        parts.append(coefficients @ basis.T + torch.randn(D_HEAD, generator=g))
    return torch.cat(parts, dim=1)


def sum_of_distances_minimum(points: np.ndarray) -> np.ndarray:
    result = scipy.optimize.minimize(
        lambda y: np.linalg.norm(points - y, axis=1).sum(),
        points.mean(0),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 200_000, "maxfev": 200_000},
    )
    return result.x


def test_geometric_median_matches_scipy_minimisation():
    points = torch.randn(200, 3, generator=torch.Generator().manual_seed(3)).exp()
    ours = geometric_median(points).numpy()
    reference = sum_of_distances_minimum(points.double().numpy())
    assert np.allclose(ours, reference, atol=1e-4)
    assert np.linalg.norm(ours - points.mean(0).numpy()) > 1e-2  # a real median, not the mean


def test_geometric_median_survives_an_iterate_on_a_data_point():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(geometric_median(points), torch.zeros(2), atol=1e-6)


def test_per_head_b_dec_is_each_slice_s_own_statistic():
    sample = low_rank_sample()
    mean_sae, median_sae = block_sae(), block_sae()
    initialise_from_sample(mean_sae, sample, SAEInit(b_dec="mean"))
    initialise_from_sample(median_sae, sample, SAEInit(b_dec="geometric_median"))
    assert torch.allclose(
        mean_sae.b_dec, sample.mean(0), atol=1e-5
    )  # per-head mean = slice of joint
    for h in range(N_HEADS):
        head = slice(h * D_HEAD, (h + 1) * D_HEAD)
        reference = sum_of_distances_minimum(sample[:, head].double().numpy())
        assert np.allclose(median_sae.b_dec[head].detach().numpy(), reference, atol=1e-3)
    joint = geometric_median(sample)
    assert (
        median_sae.b_dec - joint
    ).abs().max() > 1e-2  # per-head median differs from the joint one


def test_a_dense_sae_takes_the_joint_geometric_median():
    sample = low_rank_sample()
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=N_HEADS * D_HEAD, d_sae=64))
    initialise_from_sample(sae, sample, SAEInit(b_dec="geometric_median"))
    assert torch.allclose(sae.b_dec, geometric_median(sample), atol=1e-5)


def projection_residual(rows: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    rows = rows.double()
    return (rows - rows @ basis @ basis.T).norm(dim=-1) / rows.norm(dim=-1)


@pytest.mark.parametrize("b_dec", ["zeros", "mean", "geometric_median"])
def test_active_subspace_rows_lie_in_each_head_s_subspace_holding_the_variance(b_dec):
    sample = low_rank_sample()
    sae = block_sae()
    norms_before = sae.W_dec_blocks.norm(dim=-1).clone()
    report = initialise_from_sample(sae, sample, SAEInit(b_dec=b_dec, decoder="active_subspace"))
    for h in range(N_HEADS):
        spread = (
            sample[:, h * D_HEAD : (h + 1) * D_HEAD]
            - sae.b_dec[h * D_HEAD : (h + 1) * D_HEAD].detach()
        ).double()
        eigenvalues, eigenvectors = np.linalg.eigh(spread.numpy().T @ spread.numpy())
        order = np.argsort(eigenvalues)[::-1]
        rank = report["subspace_rank"][h]
        basis = torch.from_numpy(eigenvectors[:, order[:rank]])
        held = eigenvalues[order[:rank]].sum() / eigenvalues.sum()
        assert held >= 0.999 and report["subspace_variance_held"][h] == pytest.approx(held)
        assert rank == RANK + (
            b_dec == "zeros"
        )  # data spans RANK dims around its mean, +1 around 0
        assert (
            eigenvalues[order[: rank - 1]].sum() / eigenvalues.sum() < 0.999
        )  # the smallest such rank
        assert projection_residual(sae.W_dec_blocks[h].detach(), basis).max() < 1e-5
    assert torch.allclose(sae.W_dec_blocks.norm(dim=-1), norms_before, atol=1e-6)  # norms kept
    assert torch.equal(sae.W_enc_blocks, sae.W_dec_blocks.transpose(1, 2))


@pytest.mark.parametrize("make", ["block", "dense"])
def test_data_sample_rows_point_at_distinct_sampled_tokens(make):
    """Each decoder row is the direction of one sample token minus b_dec (per head for a
    block-diagonal SAE, joint for a dense one), no token twice, norms kept."""
    sample = low_rank_sample()
    sae = (
        block_sae()
        if make == "block"
        else TopKTrainingSAE(TopKTrainingSAEConfig(d_in=N_HEADS * D_HEAD, d_sae=64, k=4))
    )
    decoder = sae.W_dec_blocks if make == "block" else sae.W_dec.unsqueeze(0)
    norms_before = decoder.norm(dim=-1).clone()
    initialise_from_sample(
        sae, sample, SAEInit(b_dec="mean", decoder="data_samples"), torch.Generator().manual_seed(0)
    )
    groups, width = decoder.shape[0], decoder.shape[2]
    for g in range(groups):
        centred = (
            sample[:, g * width : (g + 1) * width] - sample[:, g * width : (g + 1) * width].mean(0)
        ).double()
        directions = centred / centred.norm(dim=-1, keepdim=True)
        rows = decoder[g].detach().double()
        cosine = (rows / rows.norm(dim=-1, keepdim=True)) @ directions.T  # [rows, tokens]
        best = cosine.max(dim=1)
        assert (best.values > 1 - 1e-6).all()  # every row is a sampled token's direction
        assert len(set(best.indices.tolist())) == rows.shape[0]  # distinct tokens
    assert torch.allclose(decoder.norm(dim=-1), norms_before, atol=1e-6)
    encoder = sae.W_enc_blocks if make == "block" else sae.W_enc.unsqueeze(0)
    assert torch.equal(encoder, decoder.transpose(1, 2))


def planted_clusters(n_clusters, width, per_cluster=30, seed=0):
    """`(points [n_clusters * per_cluster, width], directions [n_clusters, width])`: each
    point one planted unit direction times a log-normal length plus 5% noise; the
    directions are the +- axes of a random rotation (cosine 0 or -1 between any two)."""
    g = torch.Generator().manual_seed(seed)
    rotation = torch.linalg.qr(torch.randn(width, width, generator=g))[0]
    directions = torch.cat([rotation, -rotation])[
        torch.randperm(2 * width, generator=g)[:n_clusters]
    ]
    lengths = torch.randn(n_clusters, per_cluster, 1, generator=g).exp()
    noise = 0.05 * torch.randn(n_clusters, per_cluster, width, generator=g)
    return ((directions.unsqueeze(1) + noise) * lengths).flatten(0, 1), directions


def test_spherical_kmeans_finds_every_planted_direction_once():
    """Planted direction clusters: each centre is a distinct planted direction (a
    permutation), the mean direction of the points it serves, and no cluster is empty."""
    points, directions = planted_clusters(16, D_HEAD)
    centres, sizes = spherical_kmeans(points, 16, torch.Generator().manual_seed(0))
    cosine = centres @ directions.T
    assert sorted(cosine.argmax(dim=1).tolist()) == list(range(16))
    assert (cosine.max(dim=1).values > 0.99).all()
    assert sizes.tolist() == [30] * 16
    unit = torch.nn.functional.normalize(points, dim=-1)
    assignment = (unit @ centres.T).argmax(dim=1)
    for c in range(16):  # a fixed point of Lloyd's step
        mean = unit[assignment == c].mean(0)
        assert torch.allclose(centres[c], mean / mean.norm(), atol=1e-5)


def test_spherical_kmeans_refuses_fewer_tokens_than_centres():
    with pytest.raises(ValueError, match="at least 16 sampled tokens"):
        spherical_kmeans(torch.randn(15, D_HEAD), 16)


@pytest.mark.parametrize("make", ["block", "dense"])
def test_kmeans_rows_are_the_centroids_of_each_head_s_directions(make):
    """Per head for a block-diagonal SAE (joint for a dense one): each decoder row is a
    planted direction of that head's slice, every direction once; norms kept and the
    encoder the decoder's transpose."""
    sae = (
        block_sae()
        if make == "block"
        else TopKTrainingSAE(TopKTrainingSAEConfig(d_in=N_HEADS * D_HEAD, d_sae=16, k=4))
    )
    groups = N_HEADS if make == "block" else 1
    width = N_HEADS * D_HEAD // groups
    planted = [planted_clusters(16, width, seed=g) for g in range(groups)]
    sample = torch.cat([points for points, _ in planted], dim=1)
    decoder = sae.W_dec_blocks if make == "block" else sae.W_dec.unsqueeze(0)
    norms_before = decoder.norm(dim=-1).clone()
    report = initialise_from_sample(
        sae, sample, SAEInit(decoder="kmeans"), torch.Generator().manual_seed(0)
    )
    assert report["kmeans_smallest_cluster"] == [30] * groups
    for g, (_, directions) in enumerate(planted):
        rows = torch.nn.functional.normalize(decoder[g].detach(), dim=-1)
        cosine = rows @ directions.T
        assert sorted(cosine.argmax(dim=1).tolist()) == list(range(16))
        assert (cosine.max(dim=1).values > 0.99).all()
    assert torch.allclose(decoder.norm(dim=-1), norms_before, atol=1e-6)
    encoder = sae.W_enc_blocks if make == "block" else sae.W_enc.unsqueeze(0)
    assert torch.equal(encoder, decoder.transpose(1, 2))


def test_a_dense_sae_draws_in_the_joint_subspace():
    sample = low_rank_sample()
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=N_HEADS * D_HEAD, d_sae=64, k=4))
    report = initialise_from_sample(sae, sample, SAEInit(b_dec="mean", decoder="active_subspace"))
    basis, held = principal_subspace(sample - sample.mean(0), 0.999)
    assert report["subspace_rank"] == [basis.shape[1]] and held >= 0.999
    assert projection_residual(sae.W_dec.detach(), basis).max() < 1e-5
    assert torch.equal(sae.W_enc, sae.W_dec.T)


def test_principal_subspace_is_the_smallest_rank_holding_the_share():
    centred = torch.diag(torch.tensor([10.0, 3.0, 1.0, 0.1]))  # energies 100, 9, 1, 0.01
    basis, held = principal_subspace(centred, 0.99)
    assert basis.shape == (4, 2) and held == pytest.approx(109 / 110.01)
    assert principal_subspace(centred, 1.0)[0].shape == (4, 4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: block_sae("relu"),
        lambda: block_sae("topk"),
        lambda: StandardTrainingSAE(StandardTrainingSAEConfig(d_in=32, d_sae=64)),
        lambda: TopKTrainingSAE(TopKTrainingSAEConfig(d_in=32, d_sae=64, k=4)),
        lambda: JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=32, d_sae=64)),
    ],
    ids=["block_diagonal", "block_diagonal_topk", "standard", "topk", "jumprelu"],
)
@pytest.mark.parametrize(
    "init", [None, SAEInit("mean", "active_subspace"), SAEInit("geometric_median")]
)
def test_the_encoder_starts_as_the_decoder_transpose(make, init):
    sae = make()
    if init is not None:
        initialise_from_sample(sae, low_rank_sample(200), init)
    if hasattr(sae, "W_dec_blocks"):
        assert torch.equal(sae.W_enc_blocks, sae.W_dec_blocks.transpose(1, 2))
    assert torch.equal(sae.W_enc, sae.W_dec.T)


def test_training_inputs_are_normalised_as_the_trainer_will():
    sae = block_sae()
    sae.cfg.normalize_activations = "expected_average_only_in"
    sample = low_rank_sample() * 7
    initialise_training_sae(sae, sample, SAEInit(b_dec="mean"))
    factor = (N_HEADS * D_HEAD) ** 0.5 / sample.norm(dim=-1).mean()
    assert torch.allclose(sae.b_dec, sample.mean(0) * factor, atol=1e-5)
    assert sae.cfg.metadata["initialisation"]["b_dec"] == "mean"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"b_dec": "median"}, "b_dec init must be one of"),
        ({"decoder": "pca"}, "decoder init must be one of"),
        ({"variance": 0.0}, r"in \(0, 1\]"),
        ({"n_batches": 0}, "positive integer"),
    ],
)
def test_bad_init_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SAEInit(**kwargs)


def test_training_starts_from_the_data_and_records_it(tiny_model, tmp_path):
    tokens = torch.randint(0, 101, (32, 32), generator=torch.Generator().manual_seed(1))
    sae, layout = train_hook_z_sae(
        tiny_model,
        1,
        dataset=tokens,
        training_tokens=256,
        train_batch_size_tokens=128,
        store_batch_size_prompts=4,
        expansion_factor=2,
        output_path=tmp_path,
        init=SAEInit("geometric_median", "active_subspace", n_batches=2),
    )
    record = SAE.load_from_disk(tmp_path).cfg.metadata["initialisation"]
    assert record["b_dec"] == "geometric_median" and record["sample_tokens"] == 2 * 4 * 32
    assert len(record["subspace_rank"]) == layout.n_heads
    assert all(share >= 0.999 for share in record["subspace_variance_held"])


@pytest.mark.usefixtures("tiny_embedded")
def test_train_command_sweeps_initialisations_from_one_pass(tmp_path):
    out = tmp_path / "inits"
    assert (
        main(
            [
                "train",
                "--layer",
                "1",
                "--b-dec-init",
                "zeros,geometric_median",
                "--decoder-init",
                "active_subspace",
                "--init-batches",
                "2",
                "--out",
                str(out),
                *REDUCED,
            ]
        )
        == 0
    )
    names = [entry["name"] for entry in json.loads((out / "saes.json").read_text())]
    assert names == ["L1_block_diagonal_bdec=zeros", "L1_block_diagonal_bdec=geometric_median"]
    records = [SAE.load_from_disk(out / name).cfg.metadata["initialisation"] for name in names]
    assert [(r["b_dec"], r["decoder"], r["variance"]) for r in records] == [
        ("zeros", "active_subspace", 0.999),
        ("geometric_median", "active_subspace", 0.999),
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--b-dec-init", "median"],
            "argument --b-dec-init: unknown b_dec init 'median': expected one of "
            "zeros, mean, geometric_median",
        ),
        (
            ["--decoder-init", "pca"],
            "argument --decoder-init: unknown decoder init 'pca': expected one of "
            "kaiming, active_subspace",
        ),
        (
            ["--init-variance", "1.5"],
            "argument --init-variance: '1.5' is not a share: expected a number in (0, 1]",
        ),
        (["--decoder-init", "kaiming,kaiming"], "--decoder-init lists a value twice"),
    ],
)
def test_bad_init_flags_exit_2_with_one_error_line(tmp_path, argv, message):
    result = subprocess.run(
        [sys.executable, "-m", "sae_lens_attn.cli", "train", "--layer", "0", *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2
    [error_line] = [line for line in result.stderr.splitlines() if "error:" in line]
    assert message in error_line and "Traceback" not in result.stderr
