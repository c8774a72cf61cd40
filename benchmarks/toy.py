"""Toy ground-truth sweep at the CLI defaults: the table, the estimates, block vs dense.

Builds the default multi-head toy (8 heads x 32, 512 features, ~5 active per sample,
Zipfian frequencies), trains standard and block-diagonal SAEs over dictionary sizes
(256, 512, 1024) x L1 (0.15, 0.3) with SAELens's trainer, writes sweep.csv, plots and
report.md to --out and prints the table. Then trains a dense (standard) SAE with the
parameter count of the block-diagonal one at d_sae = n_features (n_heads x fewer
latents). The last line compares the two MMCS values (same L1, same training):
`mmcs_block_diagonal=<mmcs> mmcs_dense_same_params=<mmcs>`. `--smoke` shrinks the toy
(64 features of 8 x 8) and the training (4096 samples).

    python benchmarks/toy.py [--out out/toy-benchmark] [--threads 2] [--single-head-fraction 1] [--smoke]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _bench import machine_summary, parse_with_smoke

COLUMNS = (
    "architecture",
    "l1_coefficient",
    "d_sae",
    "n_params",
    "mmcs",
    "mmcs_single_head",
    "mmcs_multi_head",
    "split_mmcs_multi_head",
    "dead_share",
    "sae_l0",
    "explained_variance",
    "train_seconds",
)
COMPARISON_L1 = 0.3
LAST_LINE_KEYS = ("mmcs_block_diagonal", "mmcs_dense_same_params")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/toy-benchmark"))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--single-head-fraction", type=float, default=1.0)
    parser.add_argument("--d-head", type=int, default=32, help="toy head width (default 32)")
    parser.add_argument("--n-features", type=int, default=512, help="true features (default 512)")
    parser.add_argument(
        "--training-samples", type=int, default=None, help="per SAE (default: the toy's)"
    )
    parser.add_argument("--eval-samples", type=int, default=20_000)
    args = parse_with_smoke(
        parser, d_head=8, n_features=64, training_samples=4096, eval_samples=2048, out=None
    )
    if args.out is None:  # smoke: the report goes to a folder removed afterwards
        with tempfile.TemporaryDirectory(prefix="toy-smoke-") as scratch:
            run(args, Path(scratch))
    else:
        run(args, args.out)


def run(args: argparse.Namespace, out: Path) -> None:
    import torch

    from sae_lens_attn.toy import (
        MultiHeadToyConfig,
        SweepConfig,
        default_dictionary_sizes,
        evaluate_on_toy,
        make_multi_head_toy,
        run_sweep,
        train_sae_on_toy,
        write_report,
    )
    from sae_lens_attn.toy.report import size_estimates

    if args.threads:
        torch.set_num_threads(args.threads)
    toy = make_multi_head_toy(
        MultiHeadToyConfig(
            d_head=args.d_head,
            n_features=args.n_features,
            single_head_fraction=args.single_head_fraction,
        )
    )
    cfg = toy.cfg
    sweep = SweepConfig(
        dictionary_sizes=default_dictionary_sizes(cfg.n_features, cfg.n_heads),
        eval_samples=args.eval_samples,
    )
    if args.training_samples:
        sweep = replace(
            sweep, training=replace(sweep.training, training_samples=args.training_samples)
        )
    assert COMPARISON_L1 in sweep.l1_coefficients
    start = time.perf_counter()
    result = run_sweep(toy, sweep)
    sweep_seconds = time.perf_counter() - start
    paths = write_report(result, out)

    print(
        f"{machine_summary()}; torch threads: {torch.get_num_threads()}; sweep of {len(result.runs)} SAEs: "
        f"{sweep_seconds:.0f} s; true features: {cfg.n_features}"
    )
    print(" | ".join(COLUMNS))
    for row in result.rows():
        print(
            " | ".join(
                f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS
            )
        )
    for (architecture, l1), estimates in size_estimates(result).items():
        print(
            f"estimated features, {architecture} l1={l1:g}: "
            + ", ".join(f"{e.method} {e}" for e in estimates)
            + f" (true {cfg.n_features})"
        )
    print(f"report: {paths['report']}")

    block = next(
        run for run in result.group("block_diagonal", COMPARISON_L1) if run.d_sae == cfg.n_features
    )
    dense_sae = train_sae_on_toy(
        toy, "standard", cfg.n_features // cfg.n_heads, COMPARISON_L1, sweep.training
    )
    dense = evaluate_on_toy(dense_sae, toy, sweep.eval_samples, seed=sweep.training.seed)
    dense_params = sum(p.numel() for p in dense_sae.parameters())
    print(
        f"block_diagonal d_sae={block.d_sae} ({block.n_params} params) vs standard "
        f"d_sae={dense_sae.cfg.d_sae} ({dense_params} params), l1={COMPARISON_L1}"
    )
    print(
        f"mmcs_block_diagonal={block.evaluation.mmcs:.3f} mmcs_dense_same_params={dense.mmcs:.3f}"
    )


if __name__ == "__main__":
    main()
