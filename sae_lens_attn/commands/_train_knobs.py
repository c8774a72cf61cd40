"""`train`'s architectures and sparsity knobs: names read from SAELens's training registry,
options mapped onto its config fields, and the sweep they expand into.

Every architecture in `sae_lens.registry.SAE_TRAINING_CLASS_REGISTRY` (SAELens's, ours,
any plugin's) is accepted by name, read when `train` runs. A knob applies to an
architecture when its training config has the knob's field (`--k` -> `k`, `--l1-coefficient`
-> `l1_coefficient`, ...), so a new registration with SAELens's field names gets the same
options. `block_diagonal` is the one exception: it is TopK in each head's block (k = d_head // 4
unless `--k` says otherwise), which has no L1 term, and `--l1-coefficient` without `--k`
makes it ReLU, which has no auxiliary loss.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from sae_lens_attn.commands._values import (
    comma_list,
    non_negative_float,
    positive_float,
    positive_int,
)
from sae_lens_attn.errors import InvalidInputError

BLOCK_DIAGONAL = "block_diagonal"
MAX_SAES_WITHOUT_YES = 64


def positive_number(text: str) -> float | int:
    """argparse type: a finite number > 0, an int when it is whole (`2` -> 2, `2.5` -> 2.5)."""
    value = positive_float(text)
    return int(value) if value.is_integer() else value


def matryoshka_widths(text: str) -> list[int]:
    """argparse type: nested widths such as `128:512:2048`, strictly increasing."""
    widths = [positive_int(part) for part in text.split(":")]
    if any(b <= a for a, b in zip(widths, widths[1:], strict=False)):
        raise argparse.ArgumentTypeError(
            f"bad widths {text!r}: expected strictly increasing widths separated by ':', e.g. 128:512:2048"
        )
    return widths


@dataclass(frozen=True)
class Knob:
    """One sweepable option: `--{option}` sets config field `field`; in swept SAE names
    it shows as `{label}=value`. `sets` are further fields it implies."""

    option: str
    field: str
    label: str
    item_type: Callable[[str], Any]
    help: str
    sets: dict[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.option.replace("-", "_")


KNOBS = (
    Knob(
        "k",
        "k",
        "k",
        positive_number,
        "active features per token (topk, abstopk), per head (block_diagonal's TopK in each "
        "head's block), mean per token (batchtopk, matryoshka_batchtopk) or mean per head and "
        "token (block_diagonal_batchtopk) (default: none, required by those; block_diagonal: "
        "d_head // 4, e.g. 8 on the embedded model's 4 heads x 32, L0 32)",
    ),
    Knob(
        "l1-coefficient",
        "l1_coefficient",
        "l1",
        non_negative_float,
        "L1 penalty of ReLU SAEs (standard, gated; block_diagonal without --k, which it switches "
        "from per-head TopK to ReLU) (default: SAELens's, 1)",
    ),
    Knob(
        "l0-coefficient",
        "l0_coefficient",
        "l0c",
        non_negative_float,
        "L0 penalty of JumpReLU SAEs (jumprelu, block_diagonal_jumprelu) (default: SAELens's, 1)",
    ),
    Knob(
        "jumprelu-threshold",
        "jumprelu_init_threshold",
        "thr",
        non_negative_float,
        "initial JumpReLU threshold (default: SAELens's, 0.01)",
    ),
    Knob(
        "jumprelu-bandwidth",
        "jumprelu_bandwidth",
        "bw",
        positive_float,
        "JumpReLU straight-through estimator bandwidth (default: SAELens's, 0.05)",
    ),
    Knob(
        "target-l0",
        "target_l0",
        "target_l0",
        positive_float,
        "JumpReLU target L0 per token (all heads together): switches to SAELens's quadratic L0 "
        "loss around it (default: none, the plain L0 penalty)",
        sets={"jumprelu_sparsity_loss_mode": "quadratic"},
    ),
    Knob(
        "matryoshka-widths",
        "matryoshka_widths",
        "widths",
        matryoshka_widths,
        "nested dictionary widths of matryoshka_batchtopk, ':'-separated, e.g. 128:512 (d_sae is "
        "added as the last width if missing) (default: none; required by matryoshka_batchtopk)",
    ),
    Knob(
        "aux-loss-coefficient",
        "aux_loss_coefficient",
        "aux",
        non_negative_float,
        "weight of the dead-feature auxiliary loss of TopK-family SAEs (default: SAELens's, 1)",
    ),
    Knob(
        "topk-threshold-lr",
        "topk_threshold_lr",
        "thr_lr",
        positive_float,
        "rate of the running threshold BatchTopK SAEs save as their JumpReLU threshold; the "
        "threshold settles after about 1/rate steps (default: SAELens's, 0.01)",
    ),
    Knob(
        "residual-threshold",
        "residual_threshold",
        "res",
        positive_float,
        "matching_pursuit: stop when the residual norm falls below this (default: SAELens's, 0.01)",
    ),
    Knob(
        "max-iterations",
        "max_iterations",
        "iters",
        positive_int,
        "matching_pursuit: most features selected per token (default: SAELens's, none)",
    ),
)


def add_knob_arguments(parser: argparse.ArgumentParser) -> None:
    """`--k`, `--l1-coefficient`, ... (each a comma list that sweeps the value) and `--yes`."""
    for knob in KNOBS:
        parser.add_argument(
            f"--{knob.option}",
            type=comma_list(knob.item_type),
            default=None,
            help=f"{knob.help}; a comma list sweeps it",
        )
    parser.add_argument(
        "--yes",
        action="store_true",
        help=f"train a sweep of more than {MAX_SAES_WITHOUT_YES} SAEs (refused without it)",
    )


def training_registry() -> dict[str, tuple[type, type]]:
    """SAELens's training registry as it is now (ours registered if the import hook did
    not run)."""
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    if BLOCK_DIAGONAL not in SAE_TRAINING_CLASS_REGISTRY:
        from sae_lens_attn.plugins import register_architectures_with_sae_lens

        register_architectures_with_sae_lens()
    return SAE_TRAINING_CLASS_REGISTRY


def config_fields(architecture: str) -> dict[str, Any]:
    """`{field name: dataclasses.Field}` of the architecture's training config, less the
    inherited ones it names in `unused_fields` (the per-head JumpReLU's `k`)."""
    config_class = training_registry()[architecture][1]
    unused = getattr(config_class, "unused_fields", frozenset())
    return {f.name: f for f in fields(config_class) if f.name not in unused}


def given_knobs(args: argparse.Namespace) -> list[Knob]:
    return [knob for knob in KNOBS if getattr(args, knob.dest, None) is not None]


def applies(knob: Knob, architecture: str, args: argparse.Namespace) -> bool:
    """Whether `knob` sets a field of `architecture` (block_diagonal: l1 without --k, the
    auxiliary loss with it)."""
    if architecture == BLOCK_DIAGONAL:
        if knob.field == "l1_coefficient" and args.k is not None:
            return False
        if knob.field == "aux_loss_coefficient" and not block_diagonal_is_topk(args):
            return False
    return knob.field in config_fields(architecture)


def block_diagonal_is_topk(args: argparse.Namespace) -> bool:
    """block_diagonal is per-head TopK unless `--l1-coefficient` without `--k` makes it ReLU."""
    return args.k is not None or args.l1_coefficient is None


def _is_per_head(architecture: str) -> bool:
    return "n_heads" in config_fields(architecture)


def check_knobs(args: argparse.Namespace) -> None:
    """Architectures known, each knob used by some listed architecture, required knobs
    given, whole k where the architecture counts features, values not repeated."""
    registry = training_registry()
    architectures = args.architecture
    for architecture in architectures:
        if architecture not in registry:
            raise InvalidInputError(
                f"unknown architecture {architecture!r}: expected one of {', '.join(sorted(registry))}"
            )
    if len(set(architectures)) != len(architectures):
        raise InvalidInputError(
            f"--architecture lists an architecture twice: {','.join(architectures)}"
        )
    for knob in given_knobs(args):
        values = getattr(args, knob.dest)
        if len({repr(v) for v in values}) != len(values):
            raise InvalidInputError(f"--{knob.option} lists a value twice: {values}")
        if not any(applies(knob, a, args) for a in architectures):
            users = sorted(a for a in registry if applies(knob, a, args))
            raise InvalidInputError(
                f"--{knob.option} does not apply to --architecture {','.join(architectures)}; it applies "
                f"to {', '.join(users)}"
                + (
                    " (block_diagonal: without --k)"
                    if knob.dest == "l1_coefficient" and args.k is not None
                    else ""
                )
            )
    for architecture in architectures:
        names = config_fields(architecture)
        if "k" in names and architecture != BLOCK_DIAGONAL:
            if args.k is None:
                meaning = "per head and token" if _is_per_head(architecture) else "per token"
                raise InvalidInputError(
                    f"--architecture {architecture} needs --k (active features {meaning}), e.g. --k "
                    f"{4 if _is_per_head(architecture) else 32}"
                )
            if "float" not in str(names["k"].type):
                fractional = [k for k in args.k if not isinstance(k, int)]
                if fractional:
                    raise InvalidInputError(
                        f"--architecture {architecture} needs a whole --k, got {fractional[0]}"
                    )
        if architecture == BLOCK_DIAGONAL and args.k is not None:
            fractional = [k for k in args.k if not isinstance(k, int)]
            if fractional:
                raise InvalidInputError(
                    f"block_diagonal keeps a whole number of features per head: --k {fractional[0]}; "
                    "for a mean per head use block_diagonal_batchtopk"
                )
        if "matryoshka_widths" in names and args.matryoshka_widths is None:
            raise InvalidInputError(
                f"--architecture {architecture} needs --matryoshka-widths (nested widths, e.g. 128:512)"
            )


def sparsity_variants(
    architecture: str, args: argparse.Namespace
) -> list[tuple[str, dict[str, Any]]]:
    """`(name suffix, config fields)` for each combination of the values of the knobs that
    apply to `architecture`; the suffix names each knob that lists several values,
    `k=2_l1=0.5`, and is empty when none does."""
    knobs = [knob for knob in given_knobs(args) if applies(knob, architecture, args)]
    extra: dict[str, Any] = (
        {"activation": "topk"}
        if architecture == BLOCK_DIAGONAL and block_diagonal_is_topk(args)
        else {}
    )
    for knob in knobs:
        extra.update(knob.sets)
    variants = []
    for values in itertools.product(*(getattr(args, knob.dest) for knob in knobs)):
        kwargs = {knob.field: _fresh(value) for knob, value in zip(knobs, values, strict=True)}
        suffix = "_".join(
            f"{knob.label}={_short(value)}"
            for knob, value in zip(knobs, values, strict=True)
            if len(getattr(args, knob.dest)) > 1
        )
        variants.append((suffix, {**kwargs, **extra}))
    return variants


def _fresh(value: Any) -> Any:
    """A list value copied: SAELens appends d_sae to matryoshka widths in place."""
    return list(value) if isinstance(value, list) else value


def _short(value: Any) -> str:
    """`4.0` -> `4`, `0.5` -> `0.5`, `[128, 512]` -> `128:512`; the full repr where 6
    digits would lose the value."""
    if isinstance(value, list):
        return ":".join(str(v) for v in value)
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def check_sweep_size(n_saes: int, names: Sequence[str], yes: bool) -> None:
    """More than `MAX_SAES_WITHOUT_YES` SAEs only with `--yes`."""
    if n_saes > MAX_SAES_WITHOUT_YES and not yes:
        raise InvalidInputError(
            f"these options ask for {n_saes} SAEs ({names[0]} .. {names[-1]}), more than "
            f"{MAX_SAES_WITHOUT_YES}; pass --yes to train them all, or list fewer values"
        )


def check_k_fits(sae_name: str, cfg: Any) -> None:
    """A dense SAE's k at most d_sae (SAELens's configs do not check it; per-head
    configs check k against their block themselves)."""
    k = getattr(cfg, "k", None)
    if k is not None and not hasattr(cfg, "n_heads") and k > cfg.d_sae:
        raise InvalidInputError(
            f"--k {k} exceeds the {cfg.d_sae} features of {sae_name}: expected --k at most d_sae, or a "
            "larger --d-sae/--expansion-factor"
        )
    widths = getattr(cfg, "matryoshka_widths", None)
    if widths and max(widths) > cfg.d_sae:
        raise InvalidInputError(
            f"--matryoshka-widths {_short(widths)} exceeds the {cfg.d_sae} features of {sae_name}: "
            "expected widths at most d_sae"
        )
