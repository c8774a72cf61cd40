"""Block-diagonal vs SAELens's SAEs: one training step and one encode, timed.

    python benchmarks/block_diagonal.py [--device cuda] [--batch 4096] [--rounds 3]
        [--shapes gpt2-small,gelu-2l] [--saes standard,...] [--k-per-head 8] [--threads N]
        [--autocast] [--compile] [--huge-pages]

For gpt2-small's hook_z shape (12 heads x 64) and gelu-2l's (8 heads x 64), expansion 32,
it times at the same `d_in` and `d_sae`:

- ReLU: SAELens's `StandardTrainingSAE` vs our `BlockDiagonalTrainingSAE` (relu, L1);
- TopK: SAELens's `TopKTrainingSAE` with k = n_heads * k_per_head, dense
  (`topk`) and with `use_sparse_activations=True` (`topk_sparse`), vs ours with
  k_per_head features in each head (`block_diagonal_topk`). SAELens's side runs with
  `rescale_acts_by_decoder_norm=False`, so both compute the same kind of function.

A training step is `training_forward_pass` (forward, MSE + L1 or auxiliary loss),
`backward`, an Adam step and `zero_grad`; an encode is the inference class's `encode`
under `no_grad`. Each (shape, SAE) runs in a fresh child process, so its peak memory is
its own: on CPU the growth of the peak resident set over the process's size before the
SAE was built, on CUDA `torch.cuda.max_memory_allocated`. The SAEs are measured in
alternation, `--rounds` times (each run: median of `--repeats` steps after `--warmup`),
and the table shows the median over rounds, so load from other processes falls on both
sides alike. Every child gets the same environment: thread count (`--threads`, default
torch's) and, with `--huge-pages`, `THP_MEM_ALLOC_ENABLE=1` (PyTorch then backs large CPU
tensors with transparent huge pages: fewer page faults on `[batch, d_sae]` tensors).

The header states device, threads, load average before and after; the last line is
`train_step_speedup=<relu> topk_train_step_speedup=<topk vs SAELens's faster mode>` for
the first shape measured (gpt2-small by default).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from _bench import (
    add_environment_arguments,
    child_environment,
    environment_summary,
    load_average,
    require_device,
)

from sae_lens_attn.commands._values import comma_list, positive_int

SHAPES = {"gpt2-small": (12, 64), "gelu-2l": (8, 64)}  # n_heads, d_head
EXPANSION = 32
RELU = ("standard", "block_diagonal")
TOPK = ("topk", "topk_sparse", "block_diagonal_topk")
ARCHITECTURES = RELU + TOPK


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def _build(args: argparse.Namespace, training: bool, d_in: int, d_sae: int, n_heads: int):
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    from sae_lens_attn import (
        BlockDiagonalSAE,
        BlockDiagonalSAEConfig,
        BlockDiagonalTrainingSAE,
        BlockDiagonalTrainingSAEConfig,
    )

    common = {"d_in": d_in, "d_sae": d_sae, "device": args.device, "dtype": "float32"}
    k_total = n_heads * args.k_per_head
    architecture = args.architecture
    if architecture == "standard":
        if training:
            return StandardTrainingSAE(StandardTrainingSAEConfig(**common))
        return StandardSAE(StandardSAEConfig(**common))
    if architecture in ("topk", "topk_sparse"):
        if training:
            sparse = architecture == "topk_sparse"
            return TopKTrainingSAE(
                TopKTrainingSAEConfig(
                    k=k_total, use_sparse_activations=sparse, rescale_acts_by_decoder_norm=False, **common
                )
            )
        return TopKSAE(TopKSAEConfig(k=k_total, **common))
    ours: dict = {"n_heads": n_heads, **common}
    if architecture == "block_diagonal_topk":
        ours.update(activation="topk", k=args.k_per_head)
    if training:
        return BlockDiagonalTrainingSAE(BlockDiagonalTrainingSAEConfig(**ours))
    return BlockDiagonalSAE(BlockDiagonalSAEConfig(**ours))


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


def _autocast(args: argparse.Namespace):
    import contextlib

    import torch

    if args.autocast:
        return torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _train_step_ms(
    args: argparse.Namespace, x, n_heads: int, expansion: int = EXPANSION, repeats: int | None = None
) -> tuple[int, float]:
    """Parameters and median ms of forward + loss + backward + Adam step + zero_grad."""
    import torch
    from sae_lens.saes.sae import TrainStepInput

    d_in = x.shape[-1]
    sae = _build(args, True, d_in, expansion * d_in, n_heads)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    forward = torch.compile(sae.training_forward_pass) if args.compile else sae.training_forward_pass
    step_input = TrainStepInput(
        sae_in=x, coefficients={"l1": 1.0}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False
    )

    def train_step() -> None:
        with _autocast(args):
            loss = forward(step_input).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    repeats = args.repeats if repeats is None else repeats
    return sum(p.numel() for p in sae.parameters()), _median_ms(train_step, args.device, args.warmup, repeats)


def _encode_ms(args: argparse.Namespace, x, n_heads: int) -> float:
    """Median ms of the inference SAE's `encode` under no_grad."""
    import torch

    d_in = x.shape[-1]
    sae = _build(args, False, d_in, EXPANSION * d_in, n_heads)

    def encode() -> None:
        with torch.no_grad(), _autocast(args):
            sae.encode(x)

    return _median_ms(encode, args.device, args.warmup, args.repeats)


def measure(args: argparse.Namespace) -> dict[str, float]:
    """One (shape, architecture) in this process: params, peak memory, train and encode ms."""
    import torch

    n_heads, d_head = SHAPES[args.shape]
    torch.manual_seed(0)
    x = torch.randn(args.batch, n_heads * d_head, device=args.device)
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
        "--device", args.device, "--batch", str(args.batch), "--k-per-head", str(args.k_per_head),
        "--warmup", str(args.warmup), "--repeats", str(args.repeats),
    ] + (["--compile"] if args.compile else []) + (["--autocast"] if args.autocast else [])  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=child_environment(args))
    if result.returncode != 0:
        raise SystemExit(f"error: {shape} {architecture} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--batch", type=positive_int, default=4096, help="tokens per step")
    parser.add_argument("--warmup", type=positive_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--rounds", type=positive_int, default=3, help="alternated runs of every SAE")
    parser.add_argument("--shapes", type=comma_list(str), default=list(SHAPES), help="comma list of " + ", ".join(SHAPES))
    parser.add_argument("--saes", type=comma_list(str), default=list(ARCHITECTURES), help="comma list of " + ", ".join(ARCHITECTURES))
    parser.add_argument("--k-per-head", type=positive_int, default=8, help="TopK features per head")
    add_environment_arguments(parser)
    parser.add_argument("--autocast", action="store_true", help="bf16 autocast around forward and encode")
    parser.add_argument("--compile", action="store_true", help="torch.compile training_forward_pass")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=SHAPES, help=argparse.SUPPRESS)
    parser.add_argument("--architecture", choices=ARCHITECTURES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [shape for shape in args.shapes if shape not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {unknown}; valid: {', '.join(SHAPES)}")
    unknown = [sae for sae in args.saes if sae not in ARCHITECTURES]
    if unknown or not ({"standard", "block_diagonal"} <= set(args.saes) or "block_diagonal_topk" in args.saes):
        parser.error(f"--saes: {unknown or args.saes}; valid: {', '.join(ARCHITECTURES)}, with both relu SAEs or block_diagonal_topk and a SAELens topk")
    if args.k_per_head > EXPANSION * SHAPES[args.shapes[0]][1]:
        parser.error("--k-per-head is larger than the features per head")
    require_device(parser, args.device)
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return

    print(
        f"device={args.device} batch={args.batch} tokens, expansion {EXPANSION}, k per head "
        f"{args.k_per_head}, {args.rounds} alternated rounds x median of {args.repeats} after "
        f"{args.warmup} warm-up, autocast={'bf16' if args.autocast else 'off'}, "
        f"compile={args.compile}, {environment_summary(args)}"
    )
    rounds: dict[tuple[str, str], list[dict[str, float]]] = {}
    for round_index in range(args.rounds):
        for shape in args.shapes:
            order = args.saes if round_index % 2 == 0 else args.saes[::-1]
            for arch in order:
                rounds.setdefault((shape, arch), []).append(run_child(args, shape, arch))
    header = f"{'shape':<11} {'sae':<20} {'d_in':>5} {'d_sae':>6} {'params':>11} {'peak MiB':>9} {'train ms':>9} {'encode ms':>10}"
    print(header)
    print("-" * len(header))
    speedups: dict[str, tuple[float, float]] = {}
    for shape in args.shapes:
        n_heads, d_head = SHAPES[shape]
        d_in = n_heads * d_head
        rows = {
            arch: {key: statistics.median(r[key] for r in rounds[(shape, arch)]) for key in rounds[(shape, arch)][0]}
            for arch in args.saes
        }
        for arch, row in rows.items():
            print(
                f"{shape:<11} {arch:<20} {d_in:>5} {EXPANSION * d_in:>6} {row['params']:>11,.0f} "
                f"{row['peak_mib']:>9.0f} {row['train_ms']:>9.1f} {row['encode_ms']:>10.1f}"
            )
        relu = topk = float("nan")
        if {"standard", "block_diagonal"} <= rows.keys():
            relu = _ratio_row(shape, "standard / ours", rows["standard"], rows["block_diagonal"])
        theirs_topk = [arch for arch in ("topk", "topk_sparse") if arch in rows]
        if theirs_topk and "block_diagonal_topk" in rows:
            best = min(theirs_topk, key=lambda arch: rows[arch]["train_ms"])  # SAELens's faster mode
            topk = _ratio_row(shape, f"{best} / ours", rows[best], rows["block_diagonal_topk"])
        speedups[shape] = (relu, topk)
    print(f"load average after: {load_average()}")
    relu, topk = speedups[args.shapes[0]]
    print(f"train_step_speedup={relu:.2f} topk_train_step_speedup={topk:.2f}")


def _ratio_row(shape: str, label: str, theirs: dict[str, float], ours: dict[str, float]) -> float:
    ratios = {key: theirs[key] / ours[key] for key in ("params", "peak_mib", "train_ms", "encode_ms")}
    print(
        f"{shape:<11} {label:<20} {'':>5} {'':>6} {ratios['params']:>10.1f}x "
        f"{ratios['peak_mib']:>8.1f}x {ratios['train_ms']:>8.1f}x {ratios['encode_ms']:>9.1f}x"
    )
    return ratios["train_ms"]


if __name__ == "__main__":
    main()
