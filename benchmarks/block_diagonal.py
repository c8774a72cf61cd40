"""Block-diagonal vs SAELens's standard SAE: one training step and one encode, timed.

    python benchmarks/block_diagonal.py [--device cuda] [--batch 4096] [--repeats 5]

For gpt2-small's hook_z shape (12 heads x 64) and gelu-2l's (8 heads x 64), expansion 32,
it times SAELens's `StandardTrainingSAE` and our `BlockDiagonalTrainingSAE` (relu, L1) at
the same `d_in` and `d_sae`: a training step is `training_forward_pass` (forward, MSE +
L1 loss), `backward`, an Adam step and `zero_grad`; an encode is the inference class's
`encode` under `no_grad`. Each (shape, SAE) runs in a fresh child process, so its peak
memory is its own: on CPU the growth of the peak resident set over the process's size
before the SAE was built, on CUDA `torch.cuda.max_memory_allocated`. It prints a table
(params, peak memory, median ms) and the ratio dense / ours; the last line is
`train_step_speedup=<x>` for the gpt2-small shape. `--compile` wraps
`training_forward_pass` in `torch.compile`, as SAELens's runner does with `compile_sae`.
On CPU, `THP_MEM_ALLOC_ENABLE=1 python benchmarks/block_diagonal.py` measures both SAEs
with PyTorch's transparent-huge-page allocation (fewer page faults on the large
`[batch, d_sae]` tensors); the header says which.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

SHAPES = {"gpt2-small": (12, 64), "gelu-2l": (8, 64)}  # n_heads, d_head
EXPANSION = 32
ARCHITECTURES = ("standard", "block_diagonal")


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _build(architecture: str, training: bool, d_in: int, d_sae: int, n_heads: int, device: str, dtype: str):
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    from sae_lens_attn import (
        BlockDiagonalSAE,
        BlockDiagonalSAEConfig,
        BlockDiagonalTrainingSAE,
        BlockDiagonalTrainingSAEConfig,
    )

    common = {"d_in": d_in, "d_sae": d_sae, "device": device, "dtype": dtype}
    if architecture == "standard":
        if training:
            return StandardTrainingSAE(StandardTrainingSAEConfig(**common))
        return StandardSAE(StandardSAEConfig(**common))
    if training:
        return BlockDiagonalTrainingSAE(BlockDiagonalTrainingSAEConfig(n_heads=n_heads, **common))
    return BlockDiagonalSAE(BlockDiagonalSAEConfig(n_heads=n_heads, **common))


def _median_ms(fn, device: str, warmup: int, repeats: int) -> float:
    import torch

    def synchronize() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _train_step_ms(
    args: argparse.Namespace, x, n_heads: int, expansion: int = EXPANSION, repeats: int | None = None
) -> tuple[int, float]:
    """Parameters and median ms of forward + loss + backward + Adam step + zero_grad."""
    import torch
    from sae_lens.saes.sae import TrainStepInput

    d_in = x.shape[-1]
    sae = _build(args.architecture, True, d_in, expansion * d_in, n_heads, args.device, args.dtype)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    forward = torch.compile(sae.training_forward_pass) if args.compile else sae.training_forward_pass
    step_input = TrainStepInput(
        sae_in=x, coefficients={"l1": 1.0}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
    )

    def train_step() -> None:
        forward(step_input).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    repeats = args.repeats if repeats is None else repeats
    return sum(p.numel() for p in sae.parameters()), _median_ms(train_step, args.device, args.warmup, repeats)


def _encode_ms(args: argparse.Namespace, x, n_heads: int) -> float:
    """Median ms of the inference SAE's `encode` under no_grad."""
    import torch

    d_in = x.shape[-1]
    sae = _build(args.architecture, False, d_in, EXPANSION * d_in, n_heads, args.device, args.dtype)

    def encode() -> None:
        with torch.no_grad():
            sae.encode(x)

    return _median_ms(encode, args.device, args.warmup, args.repeats)


def measure(args: argparse.Namespace) -> dict[str, float]:
    """One (shape, architecture) in this process: params, peak memory, train and encode ms."""
    import torch

    n_heads, d_head = SHAPES[args.shape]
    torch.manual_seed(0)
    x = torch.randn(args.batch, n_heads * d_head, device=args.device, dtype=getattr(torch, args.dtype))
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _train_step_ms(args, x[:8], n_heads, expansion=1, repeats=1)  # load kernels and thread pools
    rss_before = _rss_kib()
    params, train_ms = _train_step_ms(args, x, n_heads)
    peak_mib = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    )
    encode_ms = _encode_ms(args, x, n_heads)
    return {"params": params, "peak_mib": peak_mib, "train_ms": train_ms, "encode_ms": encode_ms}


def run_child(args: argparse.Namespace, shape: str, architecture: str) -> dict[str, float]:
    command = [
        sys.executable, __file__, "--child", "--shape", shape, "--architecture", architecture,
        "--device", args.device, "--dtype", args.dtype, "--batch", str(args.batch),
        "--warmup", str(args.warmup), "--repeats", str(args.repeats),
    ] + (["--compile"] if args.compile else [])  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if result.returncode != 0:
        raise RuntimeError(f"{shape} {architecture} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=4096, help="tokens per step")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile training_forward_pass")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=SHAPES, help=argparse.SUPPRESS)
    parser.add_argument("--architecture", choices=ARCHITECTURES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return

    import torch

    print(
        f"device={args.device} dtype={args.dtype} batch={args.batch} tokens, expansion {EXPANSION}, "
        f"median of {args.repeats} after {args.warmup} warm-up, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, compile={args.compile}, "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}"
    )
    header = f"{'shape':<11} {'sae':<15} {'d_in':>5} {'d_sae':>6} {'params':>11} {'peak MiB':>9} {'train ms':>9} {'encode ms':>10}"
    print(header)
    print("-" * len(header))
    speedups = {}
    for shape, (n_heads, d_head) in SHAPES.items():
        d_in = n_heads * d_head
        rows = {arch: run_child(args, shape, arch) for arch in ARCHITECTURES}
        for arch, row in rows.items():
            print(
                f"{shape:<11} {arch:<15} {d_in:>5} {EXPANSION * d_in:>6} {row['params']:>11,} "
                f"{row['peak_mib']:>9.0f} {row['train_ms']:>9.1f} {row['encode_ms']:>10.1f}"
            )
        dense, ours = rows["standard"], rows["block_diagonal"]
        ratios = {key: dense[key] / ours[key] for key in ("params", "peak_mib", "train_ms", "encode_ms")}
        speedups[shape] = ratios["train_ms"]
        print(
            f"{shape:<11} {'dense / ours':<15} {'':>5} {'':>6} {ratios['params']:>10.1f}x "
            f"{ratios['peak_mib']:>8.1f}x {ratios['train_ms']:>8.1f}x {ratios['encode_ms']:>9.1f}x"
        )
    print(f"train_step_speedup={speedups['gpt2-small']:.2f}")


if __name__ == "__main__":
    main()
