"""The full demo, quiet and next to one competing CPU-bound process, same seed.

    python benchmarks/demo.py [--quick] [--threads N] [--seed 0] [--out DIR] [--smoke]

Runs `sae-lens-attn demo` twice in a child process: once alone, once while a pure-Python
busy loop runs in another process (started just before, stopped just after). Stages are
read from the demo's progress bar ("demo: <step>"); at each change the child's wall
clock and CPU time (user + system of all its threads, from /proc) are recorded, so the
table shows wall and CPU seconds per stage for both runs. "startup" is everything before
the first step (interpreter, imports, torch). It also checks that both runs found the
same features (summary.json: induction features, per-head L0, family counts), since the
demo must be deterministic for a seed and thread count.

Prints the 1-minute load average before each run (the machine may be shared), the
thread setting, the table, and last `demo_wall_s=<quiet> demo_wall_loaded_s=<loaded>`.
Linux only (reads /proc). `--smoke` runs the --quick demo.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from _bench import machine_summary, parse_with_smoke, popen_python

LAST_LINE_KEYS = ("demo_wall_s", "demo_wall_loaded_s")
STEP = re.compile(r"demo: (.+?):\s+\d+%")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def busy_loop(niceness: int = 0) -> None:
    """A CPU-bound competitor: spins until terminated (at `niceness`: 19 under `--smoke`,
    where it must not take a core from the tests running beside it)."""
    os.nice(niceness)
    while True:
        pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def run_demo(command: list[str]) -> tuple[list[tuple[str, float, float]], float, float]:
    """Run the demo; `([(stage, wall_s, cpu_s), ...], total wall, total cpu)`."""
    start = time.perf_counter()
    child = popen_python(command)  # a fork of this process under --smoke
    stages: list[tuple[str, float, float]] = []
    current, stage_wall, stage_cpu = "startup", start, 0.0
    buffer, last_cpu, tail = b"", 0.0, []

    def see(text: str) -> None:  # a new stage starts where the bar first shows it
        nonlocal current, stage_wall, stage_cpu, last_cpu
        match = STEP.search(text)
        if match and match.group(1) != current:
            now, last_cpu = time.perf_counter(), cpu_seconds(child.pid)
            stages.append((current, now - stage_wall, last_cpu - stage_cpu))
            current, stage_wall, stage_cpu = match.group(1), now, last_cpu

    while True:
        chunk = child.stderr.read1(4096)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = re.split(rb"[\r\n]", buffer)
        for line in lines:
            text = line.decode("utf-8", "replace")
            tail = (tail + [text])[-20:]
            see(text)
        # tqdm writes "\r<bar>": a bar's text is terminated only when the next write
        # starts, which may be many seconds later, so the unfinished rest counts now
        see(buffer.decode("utf-8", "replace"))
    usage_before = os.times()
    child.wait()
    end = time.perf_counter()
    if child.returncode != 0:
        raise RuntimeError(f"demo failed ({child.returncode}):\n" + "\n".join(tail))
    usage = os.times()
    total_cpu = (
        usage.children_user
        - usage_before.children_user
        + usage.children_system
        - usage_before.children_system
    )
    stages.append((current + " (and exit)", end - stage_wall, max(total_cpu - stage_cpu, 0.0)))
    return stages, end - start, total_cpu


def results_of(out: Path) -> dict:
    """What must not change between runs of one seed and thread count."""
    summary = json.loads((out / "summary.json").read_text())
    return {
        sae["architecture"]: {
            key: sae[key] for key in ("induction_features", "per_head_l0", "family_summary")
        }
        for sae in summary["saes"]
    }


def measure(args: argparse.Namespace, out: Path) -> dict[str, tuple]:
    """The demo alone, then beside a busy loop: `{"quiet"|"loaded": (stages, wall, cpu, load)}`."""
    base = [sys.executable, "-m", "sae_lens_attn.cli", "demo", "--seed", str(args.seed)]
    base += ["--quick"] * args.quick + (["--threads", str(args.threads)] if args.threads else [])
    runs = {}
    for name in ("quiet", "loaded"):
        competitor = (
            multiprocessing.Process(target=busy_loop, args=(19 * args.smoke,), daemon=True)
            if name == "loaded"
            else None
        )
        if competitor is not None:
            competitor.start()
        load = os.getloadavg()[0]
        try:
            runs[name] = (*run_demo([*base, "--out", str(out / name)]), load)
        finally:
            if competitor is not None:
                competitor.terminate()
                competitor.join()
        print(
            f"{name}: load average (1 min) {load:.2f} at start, wall {runs[name][1]:.1f} s, "
            f"CPU {runs[name][2]:.1f} s",
            flush=True,
        )
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the --quick demo (a smoke test)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="passed to the demo (default: the CLI's own policy)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the two demo folders here")
    args = parse_with_smoke(parser, quick=True)

    with tempfile.TemporaryDirectory(prefix="demo-bench-") as scratch:
        out = args.out or Path(scratch)
        runs = measure(args, out)
        same = results_of(out / "quiet") == results_of(out / "loaded")
    threads = args.threads or "CLI default"
    print(
        f"\n{'full' if not args.quick else 'quick'} demo, seed {args.seed}, threads: {threads}, "
        f"{os.cpu_count()} CPUs; loaded = one busy-loop process beside it; {machine_summary()}"
    )
    header = f"{'stage':<58} {'quiet wall':>10} {'cpu':>7} {'loaded wall':>11} {'cpu':>7}"
    print(header)
    print("-" * len(header))
    quiet, loaded = runs["quiet"][0], runs["loaded"][0]
    loaded_by_stage = {stage: (wall, cpu) for stage, wall, cpu in loaded}
    for stage, wall, cpu in quiet:
        other = loaded_by_stage.get(stage, (float("nan"), float("nan")))
        print(f"{stage[:58]:<58} {wall:>10.1f} {cpu:>7.1f} {other[0]:>11.1f} {other[1]:>7.1f}")
    print(
        f"{'total':<58} {runs['quiet'][1]:>10.1f} {runs['quiet'][2]:>7.1f} "
        f"{runs['loaded'][1]:>11.1f} {runs['loaded'][2]:>7.1f}"
    )
    print(
        f"same features in both runs (induction features, per-head L0, families): "
        f"{'yes' if same else 'NO'}; outputs {f'in {args.out}' if args.out else 'removed (--out keeps them)'}"
    )
    print(f"demo_wall_s={runs['quiet'][1]:.1f} demo_wall_loaded_s={runs['loaded'][1]:.1f}")


if __name__ == "__main__":
    main()
