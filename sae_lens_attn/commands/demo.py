"""`sae-lens-attn demo`: the whole pipeline on the embedded model (or a hub model)."""

from __future__ import annotations

import argparse
import sys

from sae_lens_attn.commands._common import (
    add_model_argument,
    add_out_argument,
    add_runtime_arguments,
    check_model_name,
    check_output_folder,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline: hook_z SAEs, detectors, dashboards, report",
        description="Train a block-diagonal and a dense SAE on layer 1's hook_z with "
        "SAELens's runner, evaluate them, run every detector plugin, render dashboards, "
        "and write report.md and index.html. Runs offline on the embedded model.",
    )
    add_model_argument(parser)
    add_out_argument(parser, "sae_lens_attn_demo")
    add_runtime_arguments(parser)
    parser.add_argument("--quick", action="store_true",
                        help="tiny step counts (seconds, for tests and CI): checks that "
                        "everything runs, the numbers mean nothing")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random step")
    return parser


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from sae_lens_attn.demo.pipeline import run_demo
    from sae_lens_attn.demo.settings import FULL, QUICK
    from sae_lens_attn.models.embedded import HubUnavailableError

    check_output_folder(args.out)
    check_model_name(args.model)
    settings = replace(QUICK if args.quick else FULL, seed=args.seed)
    try:
        result = run_demo(args.out, settings, model_name=args.model)
    except HubUnavailableError as error:  # the message names the embedded default
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"report: {result.report}\nindex:  {result.index}\n"
          f"wall time: {result.seconds['total']:.0f} s")
    return 0
