"""Distributed SAE training on torch.distributed: bytes communicated per step, and speed.

Trains one SAE on hook_z of the embedded model's layer 1 (4 heads x 32, d_in 128) or of
a random model with gelu-2l's shapes (8 heads x 64, d_in 512), block-diagonal, expansion
8, for `--steps` steps of `--batch` tokens: in one process, then with 2 gloo ranks under
torchrun in `--parallel data` and `--parallel heads`. Each rank counts the payload bytes
it hands to torch.distributed collectives, by purpose; the table gives rank 0's per step
(gathers and broadcasts at start and end are listed apart). A ring all-reduce puts about
`2 (W-1)/W` times its payload on the wire per rank.

Tokens/s is the whole training call (LLM forward to hook_z + SAE) after imports and model
load; on a shared CPU with few cores, 2 ranks compete for the same cores, so the speed
column says little about scaling (see docs/distributed.md); the byte counts do not depend
on load.

Last line: `data_bytes_per_step=<data mode, all per-step purposes>
heads_gradient_bytes_per_step=<heads mode, gradients> heads_bytes_per_step=<heads mode, all>`.
`--smoke`: 2 steps of 256 tokens, the ranks forks of torchrun (`--run-path --start-method
fork`).

    python benchmarks/distributed.py [--model embedded|random-gelu-2l] [--steps 40] [--batch 1024] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _bench import build_model, machine_summary, parse_with_smoke, run_python

LAST_LINE_KEYS = ("data_bytes_per_step", "heads_gradient_bytes_per_step", "heads_bytes_per_step")
PER_STEP = ("gradients", "gradient norm", "statistics")


def train_once(args: argparse.Namespace) -> dict[str, object]:
    """One training run in this process (a torchrun worker or the single-process run)."""
    import tempfile

    import torch

    from sae_lens_attn.training.parallel.modes import parallel_training
    from sae_lens_attn.training.train import train_hook_z_sae

    torch.set_num_threads(1)
    model = build_model(args.model)
    context = 64
    rows = args.steps * args.batch // context
    tokens = torch.randint(
        0, model.cfg.d_vocab, (rows, context), generator=torch.Generator().manual_seed(0)
    )
    with parallel_training(args.parallel, "cpu") as plan, tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        sae, _ = train_hook_z_sae(
            model,
            1,
            dataset=tokens,
            training_tokens=args.steps * args.batch,
            train_batch_size_tokens=args.batch,
            store_batch_size_prompts=8,
            expansion_factor=8,
            output_path=Path(tmp) / "sae",
            parallel=plan,
        )
        seconds = time.perf_counter() - started
        sent = dict(plan.comm.payload_bytes) if plan.comm is not None else {}
    n_params = sum(p.numel() for p in sae.parameters())
    return {"seconds": seconds, "bytes": sent, "n_params": n_params, "d_sae": sae.cfg.d_sae}


def launch(args: argparse.Namespace, parallel: str | None) -> dict[str, object]:
    me = [
        str(Path(__file__).resolve()),
        "--worker",
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
    ]
    if parallel is None:
        command = [sys.executable, *me]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            # --smoke: the ranks are forks of torchrun (itself a fork of this process), not
            # fresh interpreters that import torch and sae_lens again
            *(["--run-path", "--start-method", "fork"] if args.smoke else []),
            *me,
            "--parallel",
            parallel,
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = run_python(command, env)
    if result.returncode != 0:
        raise SystemExit(f"error: {parallel or 'single'} run failed:\n{result.stderr[-3000:]}")
    line = next(x for x in reversed(result.stdout.splitlines()) if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("embedded", "random-gelu-2l"), default="embedded")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--parallel", default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parse_with_smoke(parser, steps=2, batch=256)
    if args.worker:
        result = train_once(args)
        if int(os.environ.get("RANK", "0")) == 0:
            print("RESULT " + json.dumps(result), flush=True)
        return

    rows = []
    for parallel in (None, "data", "heads"):
        result = launch(args, parallel)
        sent = result["bytes"]
        per_step = {purpose: sent.get(purpose, 0) / args.steps for purpose in PER_STEP}
        once = sum(v for k, v in sent.items() if k not in PER_STEP)
        rows.append(
            (
                parallel or "one process",
                1 if parallel is None else 2,
                args.steps * args.batch / result["seconds"],
                per_step,
                once,
                result,
            )
        )
    load = os.getloadavg()
    print(
        f"model {args.model}, layer 1, block_diagonal, d_sae {rows[0][5]['d_sae']}, "
        f"{rows[0][5]['n_params']} parameters ({4 * rows[0][5]['n_params']} bytes fp32), "
        f"{args.steps} steps x {args.batch} tokens"
    )
    print(
        f"1 torch thread per rank; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs; {machine_summary()}"
    )
    header = f"{'mode':<12} {'ranks':>5} {'tokens/s':>9} {'grad B/step':>12} {'norm B/step':>12} {'stats B/step':>13} {'once B':>9}"
    print(header)
    print("-" * len(header))
    for mode, ranks, speed, per_step, once, _ in rows:
        print(
            f"{mode:<12} {ranks:>5} {speed:>9.0f} {per_step['gradients']:>12.0f} "
            f"{per_step['gradient norm']:>12.0f} {per_step['statistics']:>13.0f} {once:>9.0f}"
        )
    data, heads = rows[1][3], rows[2][3]
    print(
        f"data_bytes_per_step={sum(data.values()):.0f} heads_gradient_bytes_per_step={heads['gradients']:.0f} "
        f"heads_bytes_per_step={sum(heads.values()):.0f}"
    )


if __name__ == "__main__":
    main()
