"""`sae-lens-attn toy`: multi-head toy ground truth, dictionary-size sweep and report."""

from __future__ import annotations

import argparse

from sae_lens_attn.commands._common import (
    add_out_argument,
    add_runtime_arguments,
    check_output_folder,
)
from sae_lens_attn.commands._values import (
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from sae_lens_attn.errors import InvalidInputError

# option -> (full default, --quick default); None in the parser means "not given"
PRESETS: dict[str, tuple[object, object]] = {
    "heads": (8, 4),
    "d_head": (32, 8),
    "features": (512, 64),
    "mean_l0": (5.0, 3.0),
    "l1": ("0.15,0.3", "0.3,0.6"),
    "training_samples": (300_000, 200_000),
    "eval_samples": (20_000, 5_000),
}


def _list_of(kind: type):
    def parse(text: str) -> tuple:
        from sae_lens_attn.toy.sweep import parse_list

        try:
            return parse_list(text, kind)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "toy",
        help="recover known multi-head features from synthetic hook_z-like data (MMCS sweeps)",
        description="Generate synthetic hook_z-like data with known single-head and multi-head "
        "features (SAELens's sae_lens.synthetic), train standard and block-diagonal SAEs over "
        "dictionary sizes x L1 coefficients with SAELens's trainer, and write sweep.csv, plots "
        "and report.md (MMCS, dead latents, estimated number of features vs the truth).",
    )
    full = {name: defaults[0] for name, defaults in PRESETS.items()}
    data = parser.add_argument_group("ground truth")
    data.add_argument("--heads", type=positive_int, help=f"number of heads (default {full['heads']})")
    data.add_argument("--d-head", type=positive_int, help=f"width of each head (default {full['d_head']})")
    data.add_argument("--features", type=positive_int, help=f"true features (default {full['features']})")
    data.add_argument("--single-head-fraction", type=non_negative_float, default=1.0,
                      help="share of features living in one head; the rest span several")
    data.add_argument("--heads-per-feature", type=positive_int, default=2,
                      help="heads spanned by each multi-head feature")
    data.add_argument("--mean-l0", type=positive_float,
                      help=f"expected active features per sample (default {full['mean_l0']})")
    data.add_argument("--firing", choices=("zipfian", "constant"), default="zipfian",
                      help="firing probabilities: decaying (Zipf) or all equal")
    data.add_argument("--correlation-rank", type=non_negative_int, default=0,
                      help="rank of SAELens's low-rank firing correlations; 0: independent (default)")
    data.add_argument("--correlation-scale", type=non_negative_float, default=0.1,
                      help="strength of the low-rank correlations")
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--sizes", type=_list_of(int),
                       help="dictionary sizes, e.g. 256,512,1024 (default: features x 1/2, 1, 2)")
    sweep.add_argument("--l1", type=_list_of(float),
                       help=f"L1 coefficients (default {full['l1']})")
    sweep.add_argument("--architectures", type=_list_of(str), default="standard,block_diagonal",
                       help="standard and/or block_diagonal, comma-separated")
    sweep.add_argument("--training-samples", type=positive_int,
                       help=f"training samples per SAE (default {full['training_samples']})")
    sweep.add_argument("--batch-size", type=positive_int, default=256, help="training batch size in samples")
    sweep.add_argument("--lr", type=positive_float, default=3e-3, help="learning rate")
    sweep.add_argument("--eval-samples", type=positive_int,
                       help=f"evaluation samples per SAE (default {full['eval_samples']})")
    sweep.add_argument("--threshold", type=finite_float, default=0.9,
                       help="MMCS between dictionaries counted as 'reproduced'")
    sweep.add_argument("--seed", type=int, default=0, help="seed of the ground truth, data and SAEs")
    sweep.add_argument("--quick", action="store_true",
                       help="small preset for a smoke test: "
                       + ", ".join(f"{k.replace('_', '-')} {v[1]}" for k, v in PRESETS.items()))
    add_out_argument(parser, "toy-results")
    add_runtime_arguments(parser)
    return parser


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill options not given from the full or the --quick preset."""
    for name, (full, quick) in PRESETS.items():
        if getattr(args, name) is None:
            value = quick if args.quick else full
            setattr(args, name, _list_of(float)(value) if name == "l1" else value)
    return args


def run(args: argparse.Namespace) -> int:
    from sae_lens.synthetic import LowRankCorrelationConfig

    from sae_lens_attn.toy import (
        MultiHeadToyConfig,
        SweepConfig,
        ToyTrainingConfig,
        default_dictionary_sizes,
        make_multi_head_toy,
        run_sweep,
        write_report,
    )
    from sae_lens_attn.toy.report import size_estimates

    args = _resolve(args)
    check_output_folder(args.out)
    if not 0 < args.threshold <= 1:
        raise InvalidInputError(f"--threshold {args.threshold}: expected an MMCS in (0, 1]")
    try:
        toy_cfg = MultiHeadToyConfig(
            n_heads=args.heads,
            d_head=args.d_head,
            n_features=args.features,
            single_head_fraction=args.single_head_fraction,
            heads_per_multi_head_feature=args.heads_per_feature,
            mean_l0=args.mean_l0,
            firing=args.firing,
            correlation=LowRankCorrelationConfig(
                rank=args.correlation_rank, correlation_scale=args.correlation_scale, seed=args.seed
            ) if args.correlation_rank > 0 else None,
            seed=args.seed,
        )
        sweep_cfg = SweepConfig(
            dictionary_sizes=args.sizes or default_dictionary_sizes(args.features, args.heads),
            l1_coefficients=args.l1,
            architectures=args.architectures,
            training=ToyTrainingConfig(
                training_samples=args.training_samples,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=args.seed,
            ),
            eval_samples=args.eval_samples,
        )
        toy = make_multi_head_toy(toy_cfg)
        sweep_cfg.check(toy)
    except ValueError as error:
        raise InvalidInputError(str(error)) from None
    result = run_sweep(toy, sweep_cfg)
    paths = write_report(result, args.out, args.threshold)
    print(f"true features: {toy_cfg.n_features}")
    for (architecture, l1), estimates in size_estimates(result, args.threshold).items():
        found = ", ".join(f"{e.method}: {e}" for e in estimates)
        mmcs = ", ".join(f"{run.d_sae}: {run.evaluation.mmcs:.3f}" for run in result.group(architecture, l1))
        print(f"{architecture} l1={l1:g}  MMCS by size {{{mmcs}}}  estimated features: {found}")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
