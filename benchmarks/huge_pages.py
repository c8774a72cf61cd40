"""Transparent huge pages for torch's CPU allocator: one SAE training step with and without.

    python benchmarks/huge_pages.py [--shape gelu-2l] [--batch 2048] [--rounds 3] [--threads 1] [--smoke]

For SAELens's standard SAE and our block-diagonal SAE (relu, L1, expansion 32), runs
`benchmarks/block_diagonal.py`'s child measurement (median training step of 5 after
warm-up, in a fresh process) with the CLI's huge-page policy off and on
(`THP_MEM_ALLOC_ENABLE=1` and glibc's thresholds, `runtime.RuntimeSettings`), alternating
the two `--rounds` times so that a change in the machine's load hits both alike. Both use
`--threads` threads and `OMP_WAIT_POLICY=PASSIVE`. Prints each measurement with the
1-minute load average, the medians, and last `huge_pages_speedup_standard=<off / on>
huge_pages_speedup_block_diagonal=<off / on>`. `--smoke`: the tiny shape (4 heads x 8), one
round, batch 64, one step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from _bench import machine_summary, parse_with_smoke, run_python

from sae_lens_attn.runtime import HUGE_PAGES_VARIABLE, MALLOC_VARIABLES, RuntimeSettings

BLOCK_DIAGONAL_BENCHMARK = Path(__file__).with_name("block_diagonal.py")
ARCHITECTURES = ("standard", "block_diagonal")
LAST_LINE_KEYS = ("huge_pages_speedup_standard", "huge_pages_speedup_block_diagonal")


def train_step_ms(architecture: str, huge_pages: bool, args: argparse.Namespace) -> float:
    # the CLI's policy either way: threads, passive waiting and, on, huge pages with glibc's thresholds
    env = {k: v for k, v in os.environ.items() if k not in (HUGE_PAGES_VARIABLE, *MALLOC_VARIABLES)}
    env.update(RuntimeSettings(threads=args.threads, huge_pages=huge_pages).environment())
    command = [
        sys.executable,
        str(BLOCK_DIAGONAL_BENCHMARK),
        "--child",
        "--shape",
        args.shape,
        "--architecture",
        architecture,
        "--batch",
        str(args.batch),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
    ]
    result = run_python(command, env)
    if result.returncode != 0:
        raise RuntimeError(f"{architecture} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["train_ms"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="gelu-2l", choices=("gelu-2l", "gpt2-small", "tiny"))
    parser.add_argument("--batch", type=int, default=2048, help="tokens per step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--repeats", type=int, default=5, help="training steps timed per run (median)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="steps before timing")
    args = parse_with_smoke(parser, shape="tiny", batch=64, rounds=1, repeats=1, warmup=1)
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = thp.read_text().strip() if thp.exists() else "not available"
    print(
        f"shape {args.shape}, batch {args.batch}, {args.threads} thread(s), OMP_WAIT_POLICY=PASSIVE, "
        f"kernel THP: {mode}; {machine_summary()}"
    )
    print(f"{'round':>5} {'sae':<15} {'huge pages':>10} {'load 1m':>7} {'train ms':>9}")
    times: dict[tuple[str, bool], list[float]] = {}
    for round_ in range(args.rounds):
        for architecture in ARCHITECTURES:
            for huge_pages in (False, True) if round_ % 2 == 0 else (True, False):
                load = os.getloadavg()[0]
                ms = train_step_ms(architecture, huge_pages, args)
                times.setdefault((architecture, huge_pages), []).append(ms)
                print(
                    f"{round_:>5} {architecture:<15} {'on' if huge_pages else 'off':>10} "
                    f"{load:>7.2f} {ms:>9.1f}",
                    flush=True,
                )
    print(f"\n{'sae':<15} {'off ms':>9} {'on ms':>9} {'off / on':>9}")
    speedups = {}
    for architecture in ARCHITECTURES:
        off = statistics.median(times[architecture, False])
        on = statistics.median(times[architecture, True])
        speedups[architecture] = off / on
        print(f"{architecture:<15} {off:>9.1f} {on:>9.1f} {off / on:>9.2f}")
    print(" ".join(f"huge_pages_speedup_{name}={value:.2f}" for name, value in speedups.items()))


if __name__ == "__main__":
    main()
