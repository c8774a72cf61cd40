"""Synthetic hook_z-like data with known per-head features (Sharkey, Braun, Millidge 2022).

`x = F^T a` where `a [batch, n_features]` are sparse non-negative feature activations drawn
by SAELens's `ActivationGenerator` (firing probabilities, magnitudes, low-rank
correlations) and `F [n_features, n_heads * d_head]` is a SAELens `FeatureDictionary`
whose rows we lay out head by head: a *single-head* feature lives in one head's
`d_head` slice, a *multi-head* feature spreads its unit norm equally over several heads'
slices. The data is head-major like hook_z flattened over heads
(`einops.rearrange(z, "... h d -> ... (h d)")`), so `HeadLayout.split` gives
`[..., n_heads, d_head]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sae_lens.synthetic import (
    ConstantFiringProbabilityConfig,
    FeatureDictionary,
    FiringProbabilityConfig,
    LowRankCorrelationConfig,
    SyntheticModel,
    SyntheticModelConfig,
    ZipfianFiringProbabilityConfig,
    orthogonalize_embeddings,
    zipfian_firing_probabilities,
)

from sae_lens_attn.sources.head_layout import HeadLayout

FIRING_KINDS = ("zipfian", "constant")


@dataclass(frozen=True)
class MultiHeadToyConfig:
    """Shape and statistics of a multi-head toy ground truth.

    Defaults follow the toy setup of Sharkey et al. in spirit: twice as many features as
    dimensions (512 features in 8 heads x 32), about 5 features active per sample, and
    feature frequencies that decay (Zipfian, most frequent 10x the rarest).

    Attributes:
        n_heads, d_head: the data is `[batch, n_heads * d_head]`.
        n_features: number of ground-truth features.
        single_head_fraction: share of features that live in one head's subspace; the
            rest each span `heads_per_multi_head_feature` distinct heads (chosen at random),
            with an equal share `1/sqrt(k)` of their unit norm in each.
        mean_l0: expected number of active features per sample (sum of the firing
            probabilities). Used only when `firing_probability` is None.
        firing: "zipfian" (decaying frequencies, `zipf_exponent`, `zipf_max_over_min`) or
            "constant" (every feature fires with probability `mean_l0 / n_features`).
        firing_probability: any SAELens `FiringProbabilityConfig`; overrides `firing`
            and `mean_l0`.
        correlation: SAELens `LowRankCorrelationConfig` for correlated firing, or None.
        mean_magnitude, std_magnitude: firing magnitude (a ReLU'd normal) when active.
        orthogonalize: make the directions that share a head as orthogonal as SAELens's
            `orthogonalize_embeddings` can (they cannot be exactly orthogonal when a head
            holds more than `d_head` of them).
        seed: seed of everything random in the ground truth (not of sampling).
    """

    n_heads: int = 8
    d_head: int = 32
    n_features: int = 512
    single_head_fraction: float = 1.0
    heads_per_multi_head_feature: int = 2
    mean_l0: float = 5.0
    firing: str = "zipfian"
    zipf_exponent: float = 1.0
    zipf_max_over_min: float = 10.0
    firing_probability: FiringProbabilityConfig | None = None
    correlation: LowRankCorrelationConfig | None = None
    mean_magnitude: float = 1.0
    std_magnitude: float = 0.25
    orthogonalize: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_heads < 1 or self.d_head < 1 or self.n_features < 1:
            raise ValueError(
                f"n_heads, d_head and n_features must be positive, got n_heads={self.n_heads}, "
                f"d_head={self.d_head}, n_features={self.n_features}"
            )
        if not 0.0 <= self.single_head_fraction <= 1.0:
            raise ValueError(
                f"single_head_fraction must be in [0, 1], got {self.single_head_fraction}"
            )
        if self.single_head_fraction < 1.0 and not 2 <= self.heads_per_multi_head_feature <= self.n_heads:
            raise ValueError(
                f"heads_per_multi_head_feature must be between 2 and n_heads={self.n_heads} "
                f"when some features span several heads, got {self.heads_per_multi_head_feature}"
            )
        if self.firing not in FIRING_KINDS:
            raise ValueError(f"firing must be one of {FIRING_KINDS}, got {self.firing!r}")
        if self.firing_probability is None and not 0.0 < self.mean_l0 < self.n_features:
            raise ValueError(
                f"mean_l0 must be in (0, n_features={self.n_features}), got {self.mean_l0}"
            )

    @property
    def d_in(self) -> int:
        """Data width: `n_heads * d_head`."""
        return self.n_heads * self.d_head

    @property
    def n_multi_head_features(self) -> int:
        return self.n_features - round(self.single_head_fraction * self.n_features)

    def firing_probability_config(self) -> FiringProbabilityConfig:
        """The SAELens firing-probability config this toy samples with."""
        if self.firing_probability is not None:
            return self.firing_probability
        if self.firing == "constant" or self.n_features == 1:
            return ConstantFiringProbabilityConfig(probability=self.mean_l0 / self.n_features)
        return zipfian_for_mean_l0(
            self.n_features, self.mean_l0, self.zipf_exponent, self.zipf_max_over_min
        )


def zipfian_for_mean_l0(
    n_features: int, mean_l0: float, exponent: float = 1.0, max_over_min: float = 10.0
) -> ZipfianFiringProbabilityConfig:
    """SAELens's Zipfian firing config whose probabilities sum to `mean_l0`.

    SAELens maps Zipf ranks affinely onto `[min_prob, max_prob]`, so the sum is
    `n * min_prob + (max_prob - min_prob) * T` with `T` the sum of the rescaled ranks;
    fixing `max_prob = max_over_min * min_prob` gives `min_prob` in closed form.
    """
    if max_over_min <= 1.0:
        raise ValueError(f"max_over_min must be > 1, got {max_over_min}")
    shape = zipfian_firing_probabilities(n_features, exponent, max_prob=1.0, min_prob=1e-9)
    rescaled_sum = float(((shape - shape.min()) / (shape.max() - shape.min())).sum())
    min_prob = mean_l0 / (n_features + (max_over_min - 1.0) * rescaled_sum)
    max_prob = max_over_min * min_prob
    if max_prob > 1.0:
        raise ValueError(
            f"mean_l0={mean_l0} with {n_features} features needs a most frequent feature "
            f"firing with probability {max_prob:.2f} > 1; lower mean_l0 or max_over_min"
        )
    return ZipfianFiringProbabilityConfig(exponent=exponent, max_prob=max_prob, min_prob=min_prob)


@dataclass
class MultiHeadToy:
    """A multi-head ground truth: SAELens's `SyntheticModel` plus which heads each
    feature lives in.

    Attributes:
        cfg: the toy config.
        synthetic_model: SAELens `SyntheticModel` (its `feature_dict` holds the true
            features, its `activation_generator` samples them); train on it with
            SAELens's `SyntheticSAERunner`.
        feature_heads: `[n_features, n_heads]` bool, True where a feature has non-zero
            entries in that head's slice.
    """

    cfg: MultiHeadToyConfig
    synthetic_model: SyntheticModel
    feature_heads: torch.Tensor

    @property
    def features(self) -> torch.Tensor:
        """True feature directions `[n_features, n_heads * d_head]`, unit norm."""
        return self.synthetic_model.feature_dict.feature_vectors.detach()

    @property
    def is_single_head(self) -> torch.Tensor:
        """`[n_features]` bool."""
        return self.feature_heads.sum(dim=1) == 1

    @property
    def home_head(self) -> torch.Tensor:
        """`[n_features]` long: the head of a single-head feature, -1 for multi-head ones."""
        return torch.where(self.is_single_head, self.feature_heads.float().argmax(dim=1), -1)

    @property
    def layout(self) -> HeadLayout:
        """All `n_heads` heads of a notional layer 0, in order."""
        return HeadLayout(
            layer=0,
            heads=tuple(range(self.cfg.n_heads)),
            d_head=self.cfg.d_head,
            n_model_heads=self.cfg.n_heads,
        )

    @torch.no_grad()
    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`(x [batch, n_heads * d_head], feature_acts [batch, n_features])`."""
        x, acts = self.synthetic_model.sample_with_features(batch_size)
        return x, acts


def assign_heads(cfg: MultiHeadToyConfig) -> torch.Tensor:
    """`[n_features, n_heads]` bool support of every feature.

    Multi-head features are a random subset (so they cover all frequencies); the
    single-head ones are dealt to heads in frequency order, back and forth
    (0, 1, .., H-1, H-1, .., 0, 0, 1, ..), so every head gets the same mix of frequent
    and rare features.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    heads = torch.zeros(cfg.n_features, cfg.n_heads, dtype=torch.bool)
    multi = torch.randperm(cfg.n_features, generator=generator)[: cfg.n_multi_head_features]
    is_multi = torch.zeros(cfg.n_features, dtype=torch.bool)
    is_multi[multi] = True
    single = (~is_multi).nonzero().squeeze(1)
    position = torch.arange(len(single))
    forth = position % cfg.n_heads
    heads[single, torch.where((position // cfg.n_heads) % 2 == 0, forth, cfg.n_heads - 1 - forth)] = True
    for feature in multi.sort().values.tolist():
        chosen = torch.randperm(cfg.n_heads, generator=generator)[: cfg.heads_per_multi_head_feature]
        heads[feature, chosen] = True
    return heads


def head_structured_directions(cfg: MultiHeadToyConfig, feature_heads: torch.Tensor) -> torch.Tensor:
    """Unit feature directions `[n_features, n_heads * d_head]` supported on `feature_heads`.

    In each head, the slices of all features touching it are random unit vectors
    (orthogonalized together if `cfg.orthogonalize`), scaled by `1/sqrt(k)` for a
    feature spanning `k` heads.
    """
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    directions = torch.zeros(cfg.n_features, cfg.n_heads, cfg.d_head)
    share = feature_heads.sum(dim=1, keepdim=True).float().rsqrt()  # [n_features, 1]
    for head in range(cfg.n_heads):
        members = feature_heads[:, head].nonzero().squeeze(1)
        if len(members) == 0:
            continue
        slices = torch.randn(len(members), cfg.d_head, generator=generator)
        if cfg.orthogonalize and len(members) > 1:
            slices = orthogonalize_embeddings(slices)
        slices = slices / slices.norm(dim=1, keepdim=True)
        directions[members, head] = slices * share[members]
    return directions.flatten(1)


def make_multi_head_toy(cfg: MultiHeadToyConfig | None = None) -> MultiHeadToy:
    """Build the ground truth: head supports, directions, and SAELens's sampler."""
    cfg = cfg or MultiHeadToyConfig()
    feature_heads = assign_heads(cfg)
    directions = head_structured_directions(cfg, feature_heads)

    def write_directions(feature_dict: FeatureDictionary) -> None:
        feature_dict.feature_vectors.data = directions.clone()

    feature_dict = FeatureDictionary(
        num_features=cfg.n_features,
        hidden_dim=cfg.d_in,
        bias=False,
        initializer=write_directions,
        seed=cfg.seed,
    )
    model_cfg = SyntheticModelConfig(
        num_features=cfg.n_features,
        hidden_dim=cfg.d_in,
        firing_probability=cfg.firing_probability_config(),
        correlation=cfg.correlation,
        std_firing_magnitudes=cfg.std_magnitude,
        mean_firing_magnitudes=cfg.mean_magnitude,
        bias=False,
        seed=cfg.seed,
    )
    model = SyntheticModel(model_cfg, feature_dict=feature_dict)
    return MultiHeadToy(cfg=cfg, synthetic_model=model, feature_heads=feature_heads)
