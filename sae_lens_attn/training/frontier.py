"""The sparsity/fidelity frontier of trained SAEs, read from `saes.json` files.

A *point* is one trained SAE: its L0, CE loss recovered and explained variance (SAELens's
evals), per-head L0 and CE loss recovered (the per-head evals), training tokens and
seconds (`training.timing`), parameters. A *line* is one architecture at one training
length: its points sorted by L0. The architecture label is the architecture it was trained
as (`training_label`: `block_diagonal topk`, `batchtopk`, ...), and its
family is "per-head" when the SAE's config has `n_heads` (block-diagonal family), else
"dense".

Comparisons at a target L0 interpolate CE loss recovered along a line, linearly in
log(L0) between the two points that bracket the target; a target outside a line's L0
range has no value (no extrapolation). The equal-time view asks, for each architecture
label, what CE it reached at the target L0 within a wall-clock budget B (seconds a run of
that SAE alone takes, `training_seconds_alone`): interpolated linearly in log(seconds)
between its lines (training lengths), its longest run when that took less than B (a
conservative value: with more time it could only do better), none when even its shortest
run took longer. The default B is the smallest budget at which every label has a value.

Only `json`, `math` and `pathlib` are imported: the command line reads files without torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sae_lens_attn.training.outputs import SAE_CONFIG_FILENAME, SAE_LIST_FILENAME, read_sae_list

TARGET_L0S = (8.0, 20.0, 40.0)
RULE_OF_THUMB = {"l0": 20.0, "ce_loss_score": 0.8}  # attention SAEs: L0 < 20 at > 80% CE recovered
PER_HEAD, DENSE = "per-head", "dense"
HEAD_METRICS = ("l0", "ce_loss_recovered", "explained_variance")


@dataclass(frozen=True)
class FrontierPoint:
    """One trained SAE on the frontier (None: not measured)."""

    sweep: str
    name: str
    label: str
    family: str
    hook: str
    l0: float | None
    ce_loss_score: float | None
    explained_variance: float | None
    training_tokens: int | None
    training_seconds: float | None
    training_seconds_alone: float | None
    d_sae: int | None = None
    n_params: int | None = None
    heads: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_frontier_points(paths: Sequence[str | Path]) -> list[FrontierPoint]:
    """The points of every SAE listed in `paths` (`saes.json` files, or folders holding
    one). A ValueError says which file is not a `saes.json`, or that the runs read
    different hooks (a frontier compares SAEs of one hook)."""
    points = []
    for given in paths:
        path = Path(given)
        file = path / SAE_LIST_FILENAME if path.is_dir() else path
        if file.name != SAE_LIST_FILENAME or not file.is_file():
            raise ValueError(
                f"{given} is not a {SAE_LIST_FILENAME} (or a folder holding one) written by `train`"
            )
        try:
            entries = read_sae_list(file.parent)
        except (UnicodeDecodeError, OSError) as error:
            raise ValueError(f"{file} is not a readable {SAE_LIST_FILENAME} ({error})") from None
        if not entries:
            raise ValueError(f"{file} lists no SAE")
        points += [_point(file.parent, str(given), entry) for entry in entries]
    hooks = sorted({point.hook for point in points})
    if len(hooks) > 1:
        raise ValueError(
            f"the runs read different hooks ({', '.join(hooks)}); a frontier compares SAEs on one hook"
        )
    return points


def _point(folder: Path, sweep: str, entry: Mapping[str, Any]) -> FrontierPoint:
    metrics = entry["metrics"] if isinstance(entry["metrics"], dict) else {}
    cfg = _sae_config(folder / entry["path"])
    heads = entry["heads"] if isinstance(entry["heads"], list) else []
    label = training_label(entry, cfg)
    per_head = "n_heads" in cfg if cfg else label.startswith("block_diagonal")
    layer = entry["layer"]
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise ValueError(
            f"{folder / SAE_LIST_FILENAME}: SAE {entry['name']!r} has layer {layer!r}, expected an integer"
        )
    head_values: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        head, _, metric = key.partition("/")
        if metric in HEAD_METRICS:
            head_values.setdefault(head, {})[metric] = value
    return FrontierPoint(
        sweep=sweep,
        name=entry["name"],
        label=label,
        family=PER_HEAD if per_head else DENSE,
        hook=f"blocks.{layer}.attn.hook_z" + ("" if not heads else f" heads {heads}"),
        l0=metrics.get("l0"),
        ce_loss_score=metrics.get("ce_loss_score"),
        explained_variance=metrics.get("explained_variance"),
        training_tokens=_int_or_none(metrics.get("training_tokens")),
        training_seconds=metrics.get("training_seconds"),
        training_seconds_alone=metrics.get(
            "training_seconds_alone", metrics.get("training_seconds")
        ),
        d_sae=_int_or_none(cfg.get("d_sae")),
        n_params=_parameter_count(cfg),
        heads=head_values,
    )


def training_label(entry: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    """The architecture an SAE was trained as (SAELens's `training_architecture`
    metadata: a BatchTopK SAE saves itself as a JumpReLU), with the activation of a
    `block_diagonal` SAE (relu or topk) and a data-driven initialisation (`init
    mean+active_subspace`; SAELens's own adds nothing)."""
    metadata = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    trained_as = metadata.get("training_architecture")
    label = trained_as if isinstance(trained_as, str) else str(entry["architecture"])
    if label == "block_diagonal" and isinstance(cfg.get("activation"), str):
        label += f" {cfg['activation']}"
    init = metadata.get("initialisation")
    if isinstance(init, dict) and (init.get("b_dec"), init.get("decoder")) != ("zeros", "kaiming"):
        label += f" init {init.get('b_dec')}+{init.get('decoder')}"
    return label


def _sae_config(folder: Path) -> dict[str, Any]:
    """The SAE's `cfg.json` when it is there and readable, else {}."""
    try:
        cfg = json.loads((folder / SAE_CONFIG_FILENAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _parameter_count(cfg: Mapping[str, Any]) -> int | None:
    """Encoder + decoder weights and biases: `2 d_in d_sae + d_sae + d_in` dense, with
    `d_in / n_heads` in place of `d_in` in the weights of a per-head SAE."""
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    if not isinstance(d_in, int) or not isinstance(d_sae, int):
        return None
    n_heads = (
        cfg.get("n_heads") if isinstance(cfg.get("n_heads"), int) and cfg.get("n_heads") > 0 else 1
    )
    return 2 * (d_in // n_heads) * d_sae + d_sae + d_in


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass(frozen=True)
class FrontierLine:
    """One architecture label at one training length: its points with an L0 and a CE
    loss recovered, sorted by L0."""

    label: str
    family: str
    training_tokens: int | None
    points: tuple[FrontierPoint, ...]

    @property
    def name(self) -> str:
        tokens = (
            "" if self.training_tokens is None else f", {_tokens_text(self.training_tokens)} tokens"
        )
        return f"{self.label}{tokens}"

    def at_l0(self, l0: float, metric: str = "ce_loss_score") -> float | None:
        """`metric` at L0 `l0` (interpolated in log L0; None outside the line)."""
        return interpolate(
            [(p.l0, getattr(p, metric)) for p in self.points if getattr(p, metric) is not None], l0
        )


def _tokens_text(tokens: int) -> str:
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if tokens >= size:
            return f"{tokens / size:g}{suffix}"
    return str(tokens)


def frontier_lines(points: Iterable[FrontierPoint]) -> list[FrontierLine]:
    """Points grouped by (label, training tokens), each group sorted by L0; points with no
    L0 or no CE loss recovered are left out."""
    groups: dict[tuple[str, int | None], list[FrontierPoint]] = {}
    for point in points:
        if point.l0 is not None and point.ce_loss_score is not None and point.l0 > 0:
            groups.setdefault((point.label, point.training_tokens), []).append(point)
    return [
        FrontierLine(label, group[0].family, tokens, tuple(sorted(group, key=lambda p: p.l0)))
        for (label, tokens), group in sorted(
            groups.items(), key=lambda item: (item[0][0], item[0][1] or 0)
        )
    ]


def interpolate(xy: Sequence[tuple[float, float]], x: float, log: bool = True) -> float | None:
    """y at `x` on the piecewise-linear curve through `xy` (in log x when `log`), or None
    when `x` is outside the range of the x values. Equal x values are averaged."""
    merged: dict[float, list[float]] = {}
    for px, py in xy:
        merged.setdefault(float(px), []).append(float(py))
    curve = sorted((px, sum(ys) / len(ys)) for px, ys in merged.items())
    if not curve or not curve[0][0] <= x <= curve[-1][0]:
        return None
    scale = math.log if log else (lambda value: value)
    for (x0, y0), (x1, y1) in zip(curve, curve[1:], strict=False):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (scale(x) - scale(x0)) / (scale(x1) - scale(x0))
    return curve[0][1]  # one point, at x


def best_at_l0(
    lines: Iterable[FrontierLine], family: str, l0: float, tokens: int | None
) -> tuple[float | None, str | None]:
    """The best CE loss recovered at `l0` among `family`'s lines of `tokens` training
    tokens, and the label reaching it."""
    values = [
        (line.at_l0(l0), line.label)
        for line in lines
        if line.family == family and line.training_tokens == tokens
    ]
    values = [(value, label) for value, label in values if value is not None]
    return max(values) if values else (None, None)


def equal_token_gaps(
    lines: Sequence[FrontierLine], l0s: Sequence[float] = TARGET_L0S
) -> dict[str, Any]:
    """Per training length and target L0: best per-head CE, best dense CE and their gap
    (None where a family has no line covering that L0)."""
    rows = []
    for tokens in sorted({line.training_tokens or 0 for line in lines}):
        tokens_key = tokens or None
        for l0 in l0s:
            per_head, per_head_label = best_at_l0(lines, PER_HEAD, l0, tokens_key)
            dense, dense_label = best_at_l0(lines, DENSE, l0, tokens_key)
            gap = None if per_head is None or dense is None else per_head - dense
            rows.append(
                {
                    "training_tokens": tokens_key,
                    "l0": l0,
                    "per_head": per_head,
                    "per_head_label": per_head_label,
                    "dense": dense,
                    "dense_label": dense_label,
                    "gap": gap,
                }
            )
    return {"rows": rows, "min_gap": _min_gap(rows)}


def time_curves(lines: Sequence[FrontierLine], l0: float) -> dict[str, list[tuple[float, float]]]:
    """Per label, `(seconds alone, CE)` at L0 `l0` of each of its lines (both interpolated
    along the line), sorted by seconds."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for line in lines:
        ce = line.at_l0(l0)
        seconds = interpolate(
            [
                (p.l0, p.training_seconds_alone)
                for p in line.points
                if p.training_seconds_alone is not None
            ],
            l0,
        )
        if ce is not None and seconds is not None and seconds > 0:
            curves.setdefault(line.label, []).append((seconds, ce))
    return {label: sorted(curve) for label, curve in curves.items()}


def within_budget(curve: Sequence[tuple[float, float]], budget: float) -> float | None:
    """CE reached within `budget` seconds on a `(seconds, CE)` curve (see module doc)."""
    if not curve or budget < curve[0][0]:
        return None
    if budget >= curve[-1][0]:
        return curve[-1][1]
    return interpolate(curve, budget)


def equal_time_gaps(
    lines: Sequence[FrontierLine], l0s: Sequence[float] = TARGET_L0S, budget: float | None = None
) -> dict[str, Any]:
    """Per target L0: the budget (given, or the smallest at which every label has a
    value), each label's CE within it, best per-head, best dense and the gap."""
    families = {line.label: line.family for line in lines}
    rows = []
    for l0 in l0s:
        curves = time_curves(lines, l0)
        at = (
            budget
            if budget is not None
            else max((curve[0][0] for curve in curves.values()), default=None)
        )
        values = (
            {label: within_budget(curve, at) for label, curve in curves.items()}
            if at is not None
            else {}
        )
        best = {}
        for family in (PER_HEAD, DENSE):
            found = [
                (value, label)
                for label, value in values.items()
                if value is not None and families[label] == family
            ]
            best[family] = max(found) if found else (None, None)
        gap = (
            None
            if best[PER_HEAD][0] is None or best[DENSE][0] is None
            else best[PER_HEAD][0] - best[DENSE][0]
        )
        rows.append(
            {
                "l0": l0,
                "budget_seconds": at,
                "values": values,
                "per_head": best[PER_HEAD][0],
                "per_head_label": best[PER_HEAD][1],
                "dense": best[DENSE][0],
                "dense_label": best[DENSE][1],
                "gap": gap,
            }
        )
    return {"rows": rows, "min_gap": _min_gap(rows)}


def _min_gap(rows: Sequence[Mapping[str, Any]]) -> float | None:
    gaps = [row["gap"] for row in rows if row["gap"] is not None]
    return min(gaps) if gaps else None


def frontier_summary(points: Sequence[FrontierPoint]) -> dict[str, Any]:
    """Everything `frontier.json` holds: points, lines, equal-token and equal-time gaps,
    the rule of thumb and the interpolation method."""
    lines = frontier_lines(points)
    return {
        "hook": points[0].hook if points else None,
        "points": [point.to_dict() for point in points],
        "lines": [
            {
                "name": line.name,
                "label": line.label,
                "family": line.family,
                "training_tokens": line.training_tokens,
                "points": [p.name for p in line.points],
            }
            for line in lines
        ],
        "target_l0s": list(TARGET_L0S),
        "equal_tokens": equal_token_gaps(lines),
        "equal_time": equal_time_gaps(lines),
        "rule_of_thumb": RULE_OF_THUMB,
        "method": "CE loss recovered at a target L0: linear in log(L0) between the two SAEs of an "
        "architecture's line that bracket it, none outside the line. Equal time: per architecture, "
        "linear in log(seconds alone) between its training lengths; its longest run if that took "
        "less than the budget; budget = the smallest at which every architecture has a value.",
    }
