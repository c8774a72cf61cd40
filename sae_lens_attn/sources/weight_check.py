"""Check an SAE's weights for damage: NaN/inf values, all-zero decoder or encoder rows.

A diverged training run or a bad copy leaves weights that load without complaint and then
give complete-looking, empty results. `inspect_weights` reads each tensor of a state dict
once (a sum per feature; exact element-wise tests only where a sum is not finite or is
zero) and maps what it finds to feature indices; `check_sae_weights` does it for a loaded
SAE and raises `NonFiniteWeightsError` for NaN or inf, or, with `allow_nonfinite=True`,
zeroes the affected features so that they read as dead everywhere and records them in
`sae.cfg.metadata["skipped_nonfinite_features"]` (`skipped_features(sae)`).
`check_loaded_sae` adds the zero-row warnings and the no-live-feature error: it is what
every loader calls.

Feature axes are found from each tensor's shape: `[d_sae]` vectors, `W_enc [d_in, d_sae]`,
`W_dec [d_sae, d_in]`, and block-diagonal blocks `[H, d_head, m]` / `[H, m, d_head]` with
feature `h * m + j`. A tensor with no feature axis (`b_dec`) feeds every feature.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.errors import NoLiveFeaturesError, NonFiniteWeightsError

if TYPE_CHECKING:
    from sae_lens import SAE

SKIPPED_KEY = "skipped_nonfinite_features"
_SHOWN = 10  # feature indices shown in a message before "..."


@dataclasses.dataclass(frozen=True)
class TensorDamage:
    """NaN and inf counts of one tensor; `features`: the features whose slice holds them,
    None when the tensor has no feature axis (so every feature depends on it)."""

    name: str
    shape: tuple[int, ...]
    nan: int
    inf: int
    features: tuple[int, ...] | None

    def describe(self, d_sae: int) -> str:
        counts = " and ".join(
            f"{n} {kind}" for n, kind in ((self.nan, "NaN"), (self.inf, "inf")) if n
        )
        where = (
            f"{len(self.features)} of {d_sae} features"
            if self.features is not None
            else f"not per feature: all {d_sae} features depend on it"
        )
        return f"{self.name} {list(self.shape)} holds {counts} ({where})"


@dataclasses.dataclass(frozen=True)
class WeightReport:
    """What `inspect_weights` found in an SAE with `d_sae` features."""

    d_sae: int
    damaged: tuple[TensorDamage, ...] = ()
    zero_decoder: tuple[int, ...] = ()  # features whose decoder row is all zeros
    zero_encoder: tuple[int, ...] = ()  # features whose encoder column is all zeros

    @property
    def nonfinite_features(self) -> tuple[int, ...]:
        """Sorted features touched by a NaN or inf (all of them if a shared tensor is)."""
        if any(item.features is None for item in self.damaged):
            return tuple(range(self.d_sae))
        return tuple(sorted({f for item in self.damaged for f in item.features or ()}))

    def describe_nonfinite(self) -> str:
        """'W_dec [16, 64] holds 3 NaN (1 of 16 features); ...: N of M features affected'."""
        parts = "; ".join(item.describe(self.d_sae) for item in self.damaged)
        features = self.nonfinite_features
        return f"{parts}: {len(features)} of {self.d_sae} features affected ({format_indices(features)})"

    def warnings(self) -> list[str]:
        """One line per zero-row finding, saying what it means (empty when none)."""
        lines = []
        if self.zero_decoder:
            lines.append(
                f"{len(self.zero_decoder)} of {self.d_sae} features have zero decoder rows "
                f"({format_indices(self.zero_decoder)}): they write nothing and count as dead"
            )
        if self.zero_encoder:
            lines.append(
                f"{len(self.zero_encoder)} of {self.d_sae} features have zero encoder rows "
                f"({format_indices(self.zero_encoder)}): their pre-activation is the bias "
                "alone, the same on every token"
            )
        return lines


def format_indices(indices: tuple[int, ...] | list[int]) -> str:
    """'features 1, 4, 9' or 'features 0, 1, ... (24576 in all)'."""
    shown = ", ".join(map(str, indices[:_SHOWN]))
    return f"features {shown}" + (f", ... ({len(indices)} in all)" if len(indices) > _SHOWN else "")


def _feature_layout(name: str, shape: tuple[int, ...], d_sae: int) -> tuple[int, ...] | None:
    """The non-feature axes of a tensor whose feature axes, in order, flatten to the
    feature index (None: no feature axis). Names decide only where shapes are ambiguous
    (`d_in == d_sae`: `W_enc` keeps features last)."""
    encoder = "enc" in name
    if len(shape) == 1:  # b_dec lives in input space even when d_in == d_sae
        return () if shape[0] == d_sae and "dec" not in name else None
    if len(shape) == 2:
        if shape[1] == d_sae and (encoder or shape[0] != d_sae):
            return (0,)
        if shape[0] == d_sae:
            return (1,)
        return () if shape[0] * shape[1] == d_sae else None  # [H, m] per-head vectors
    if len(shape) == 3:
        heads, rows, cols = shape
        if heads * cols == d_sae and (encoder or heads * rows != d_sae):
            return (1,)  # [H, d_head, m]
        if heads * rows == d_sae:
            return (2,)  # [H, m, d_head]
    return None


def _per_feature(mask: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """`[d_sae]` bool: any True in each feature's slice (`axes`: its non-feature axes)."""
    return (mask.any(dim=axes) if axes else mask).reshape(-1)


def inspect_weights(state: Mapping[str, torch.Tensor], d_sae: int) -> WeightReport:
    """Non-finite values per tensor and feature, and all-zero encoder/decoder rows, in the
    tensors of `state` (an SAE's `state_dict()`).

    One pass per tensor in the usual case: a sum per feature (or of the whole tensor) is
    finite only if every value summed is, and is zero whenever the values are; only a
    non-finite sum (a NaN, an inf or an overflow) or a zero one leads to the exact,
    slower element-wise tests."""
    damaged, zero_decoder, zero_encoder = [], (), ()
    for name, tensor in state.items():
        tensor = tensor.detach()
        if not tensor.is_floating_point():
            continue
        axes = _feature_layout(name, tuple(tensor.shape), d_sae)
        sums = _sums(tensor, axes)
        if not bool(torch.isfinite(sums).all()):
            item = _nonfinite(name, tensor, axes)
            if item is not None:
                damaged.append(item)
        if axes and bool((sums == 0).any()):  # an encoder or decoder matrix with zero sums
            zero = _per_feature(tensor != 0, axes).logical_not().nonzero().flatten().tolist()
            if "dec" in name:
                zero_decoder = tuple(zero)
            elif "enc" in name:
                zero_encoder = tuple(zero)
    return WeightReport(d_sae, tuple(damaged), zero_decoder, zero_encoder)


def _sums(tensor: torch.Tensor, axes: tuple[int, ...] | None) -> torch.Tensor:
    """Per-feature sums (`axes` reduced), the tensor itself for `[d_sae]` vectors, or the
    whole sum; in float32 at least, so half-precision weights overflow less."""
    dtype = torch.promote_types(tensor.dtype, torch.float32)
    if axes is None:
        return tensor.sum(dtype=dtype)
    return tensor.sum(dim=axes, dtype=dtype) if axes else tensor


def _nonfinite(
    name: str, tensor: torch.Tensor, axes: tuple[int, ...] | None
) -> TensorDamage | None:
    """The exact NaN/inf counts and features of `tensor` (None: all finite after all, the
    sum only overflowed)."""
    bad = ~torch.isfinite(tensor)
    count = int(bad.sum())
    if count == 0:
        return None
    nan = int(torch.isnan(tensor).sum())
    features = None if axes is None else tuple(_per_feature(bad, axes).nonzero().flatten().tolist())
    return TensorDamage(name, tuple(tensor.shape), nan, count - nan, features)


def check_sae_weights(sae: SAE, what: str = "SAE", allow_nonfinite: bool = False) -> WeightReport:
    """Inspect a loaded `sae` (any SAELens SAE: `load_from_disk`, `from_pretrained`, ...).

    NaN or inf anywhere: `NonFiniteWeightsError` (an `InvalidInputError`) naming the
    tensors, value counts and affected features, prefixed with `what`. With
    `allow_nonfinite`, the affected features' slices of every per-feature tensor are set
    to zero instead (so they never fire and read as dead; a damaged `b_dec` makes every
    feature affected) and their indices are stored in the SAE's metadata
    (`skipped_features`). Returns the report either way; its `warnings()` list the
    zero rows.
    """
    state = sae.state_dict()
    report = inspect_weights(state, sae.cfg.d_sae)
    if not report.damaged:
        return report
    if not allow_nonfinite:
        raise NonFiniteWeightsError(
            f"{what}: weights hold NaN or inf, so results would be meaningless: "
            f"{report.describe_nonfinite()}; retrain or copy the SAE again (a diverged run or a "
            "bad copy leaves this), or pass --allow-nonfinite (allow_nonfinite=True) to skip "
            "the affected features",
            report,
        )
    _zero_features(state, report)
    sae.cfg.metadata[SKIPPED_KEY] = list(report.nonfinite_features)
    return report


def _zero_features(state: Mapping[str, torch.Tensor], report: WeightReport) -> None:
    """Zero the affected features in every per-feature tensor, and any remaining non-finite
    value (in shared tensors such as `b_dec`), in place."""
    affected = torch.zeros(report.d_sae, dtype=torch.bool)
    affected[list(report.nonfinite_features)] = True
    with torch.no_grad():
        for name, tensor in state.items():
            if not tensor.is_floating_point():
                continue
            axes = _feature_layout(name, tuple(tensor.shape), report.d_sae)
            if axes is not None:
                shape = [1 if axis in axes else size for axis, size in enumerate(tensor.shape)]
                tensor.masked_fill_(affected.to(tensor.device).reshape(shape), 0.0)
            tensor.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def skipped_features(sae: SAE) -> tuple[int, ...]:
    """Features `check_sae_weights(..., allow_nonfinite=True)` zeroed for NaN or inf."""
    return tuple(int(f) for f in (getattr(sae.cfg, "metadata", None) or {}).get(SKIPPED_KEY, ()))


class SAEWeightWarning(UserWarning):
    """Weights that load and are finite but leave features unusable (zero rows)."""


def check_loaded_sae(sae: SAE, what: str = "SAE", allow_nonfinite: bool = False) -> WeightReport:
    """The check every loader runs once an SAE is in memory (`load_saved_sae`, and any
    other way in, such as `SAE.from_pretrained`): `check_sae_weights`, then each zero-row
    finding as a `SAEWeightWarning`, then `NoLiveFeaturesError` when no feature is left
    (every decoder row zero or skipped for NaN/inf)."""
    report = check_sae_weights(sae, what, allow_nonfinite)
    for line in report.warnings():
        warnings.warn(f"{what}: {line}", SAEWeightWarning, stacklevel=2)
    skipped = report.nonfinite_features
    if len(set(report.zero_decoder) | set(skipped)) == report.d_sae:
        raise NoLiveFeaturesError(
            f"{what}: no feature is live: of {report.d_sae} features, {len(report.zero_decoder)} "
            f"have zero decoder rows and {len(skipped)} were skipped for NaN/inf, so there is "
            "nothing to analyse (an untrained, emptied or damaged SAE)"
        )
    return report
