"""`sae-lens-attn frontier`: the L0/CE frontier of saved training runs, redrawn.

Reads one or several `saes.json` files (or the folders `train --out` wrote), which must
all list SAEs on one hook, and writes `frontier.csv`, `frontier.json`, `frontier.html`
(opens offline) and `frontier.png` into `--out`. `train` writes the same files into
`OUT/frontier` when it trains several SAEs on one hook.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sae_lens_attn.commands._common import writable_folder
from sae_lens_attn.errors import InvalidInputError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "frontier",
        help="draw the L0 / CE-recovered frontier of saved training runs (saes.json)",
        description="Read saes.json files written by `train` (one or several sweeps of SAEs on "
        "one hook) and write frontier.csv, frontier.json, frontier.html and frontier.png: L0 vs "
        "CE loss recovered and vs explained variance per architecture, the per-head view, "
        "training tokens and seconds, the equal-time view and the rule of thumb (L0 20, CE 0.8).",
    )
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="SAES_JSON",
        help="saes.json files, or folders holding one (train --out)",
    )
    parser.add_argument(
        "--out",
        type=writable_folder,
        default=Path("frontier"),
        help="folder for the frontier files (default: frontier)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from sae_lens_attn.training.frontier import read_frontier_points

    try:
        points = read_frontier_points(args.runs)
    except ValueError as error:
        raise InvalidInputError(str(error)) from None
    print_frontier(points, args.out)
    return 0


def print_frontier(points, out: Path) -> None:  # points: Sequence[FrontierPoint]
    """Write the frontier files of `points` into `out` and print the gaps at the target L0s."""
    from sae_lens_attn._safe_output import terminal_text
    from sae_lens_attn.dashboard.frontier import write_frontier
    from sae_lens_attn.training.frontier import frontier_lines, frontier_summary

    paths = write_frontier(points, out)
    summary = frontier_summary(points)
    print(
        f"frontier of {len(points)} SAEs in {len(frontier_lines(points))} lines on {terminal_text(points[0].hook)}"
    )
    for row in summary["equal_tokens"]["rows"]:
        print(
            f"  {_tokens(row['training_tokens'])} tokens, L0 {row['l0']:g}: best per-head {_value(row['per_head'])}, "
            f"best dense {_value(row['dense'])}, gap {_value(row['gap'], sign=True)}"
        )
    for row in summary["equal_time"]["rows"]:
        budget = "n/a" if row["budget_seconds"] is None else f"{row['budget_seconds']:.0f} s"
        print(
            f"  equal time ({budget}), L0 {row['l0']:g}: best per-head {_value(row['per_head'])}, "
            f"best dense {_value(row['dense'])}, gap {_value(row['gap'], sign=True)}"
        )
    print(f"wrote {', '.join(path.name for path in paths)} to {out}")


def _value(value: float | None, sign: bool = False) -> str:
    return "n/a" if value is None else (f"{value:+.3f}" if sign else f"{value:.3f}")


def _tokens(tokens: int | None) -> str:
    return "unknown" if tokens is None else f"{tokens:,}"
