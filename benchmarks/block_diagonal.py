"""Block-diagonal vs SAELens's SAEs: one training step and one encode, timed.

    python benchmarks/block_diagonal.py [--device cuda] [--batch 4096] [--rounds 3]
        [--shapes gpt2-small,gelu-2l] [--saes standard,...] [--k-per-head 8] [--threads N]
        [--relu-density 0.03] [--relu-path auto] [--dead-share 0] [--no-bf16] [--compile]
        [--huge-pages] [--smoke]

For gpt2-small's hook_z shape (12 heads x 64) and gelu-2l's (8 heads x 64), expansion 32,
it times at the same `d_in` and `d_sae`:

- ReLU: SAELens's `StandardTrainingSAE` vs our `BlockDiagonalTrainingSAE` (relu, L1);
- TopK: SAELens's `TopKTrainingSAE` with k = n_heads * k_per_head, dense
  (`topk`) and with `use_sparse_activations=True` (`topk_sparse`), vs ours with
  k_per_head features in each head (`block_diagonal_topk`). SAELens's side runs with
  `rescale_acts_by_decoder_norm=False`, so both compute the same kind of function.

A training step is `training_forward_pass` (forward, MSE + L1 or auxiliary loss),
`backward`, an Adam step and `zero_grad`, timed in float32 and again under bf16 autocast
(`bf16 ms`; `--no-bf16` skips it); an encode is the inference class's `encode` under
`no_grad`. The ReLU SAEs run at `--relu-density` (default 0.03, about 61 of each head's
2048 features: inside the per-head L0 of 20-250 of the SAEs we train; a fresh SAE on
random input has 0.5): `b_enc` is set, feature by feature, to minus that quantile of the
feature's pre-activations on the batch, identically on both sides. SAELens's dense
products cost the same at any density; ours choose the sparse ReLU step below
`sparse_relu.SPARSE_MAX_DENSITY` (`--relu-path sparse|dense` forces one, to measure the
crossover). `--dead-share F` marks a share F of the features (drawn with seed 0) dead in
every step's input, so the TopK SAEs also compute their auxiliary loss for dead features
(default 0: none dead, no auxiliary loss). Each (shape, SAE) runs in a fresh child process, so its peak memory is
its own: on CPU the growth of the peak resident set over the process's size before the
SAE was built, on CUDA `torch.cuda.max_memory_allocated`. The SAEs are measured in
alternation, `--rounds` times (each run: median of `--repeats` steps after `--warmup`),
and the table shows the median over rounds, so load from other processes falls on both
sides alike. Every child gets the same environment: thread count (`--threads`, default
torch's) and, with `--huge-pages`, the CLI's huge-page policy: `THP_MEM_ALLOC_ENABLE=1`
(PyTorch then backs large CPU tensors with transparent huge pages: fewer page faults on
`[batch, d_sae]` tensors) and glibc's thresholds that keep smaller blocks for reuse
(docs/runtime.md).

The header states device, CPU, threads, load average before and after; the last line is
`train_step_speedup=<relu> topk_train_step_speedup=<topk vs SAELens's faster mode>
bf16_train_step_speedup=<relu, both in bf16>` for the first shape measured (gpt2-small by
default). `--smoke` runs the same code on a tiny shape in seconds (one round, one repeat)
and prints the same last line.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

from _bench import (
    add_environment_arguments,
    child_environment,
    environment_summary,
    load_average,
    parse_with_smoke,
    require_device,
    run_python,
)

from sae_lens_attn.commands._values import comma_list, positive_int

SHAPES = {"gpt2-small": (12, 64), "gelu-2l": (8, 64), "tiny": (4, 8)}  # n_heads, d_head
EXPANSION = 32
RELU = ("standard", "block_diagonal")
TOPK = ("topk", "topk_sparse", "block_diagonal_topk")
ARCHITECTURES = RELU + TOPK
LAST_LINE_KEYS = ("train_step_speedup", "topk_train_step_speedup", "bf16_train_step_speedup")


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


def _set_relu_density(sae, x, density: float) -> None:
    """`b_enc` <- minus the `1 - density` quantile of each feature's pre-activation on
    (up to 1024 tokens of) `x`: each feature fires on about `density` of the tokens."""
    import torch

    with torch.no_grad():
        sae.b_enc.zero_()
        pre = sae.encode_with_hidden_pre(x[:1024])[1]
        sae.b_enc.copy_(-torch.quantile(pre, 1 - density, dim=0))


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


def _autocast(device: str, bf16: bool):
    import contextlib

    import torch

    if bf16:
        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _train_step_ms(
    args: argparse.Namespace, x, n_heads: int, bf16: bool = False, expansion: int = EXPANSION,
    repeats: int | None = None,
) -> tuple[int, float, float]:
    """Parameters, median ms of forward + loss + backward + Adam step + zero_grad, and the
    share of non-zero feature acts in the first step (`nan` for TopK)."""
    import torch
    from sae_lens.saes.sae import TrainStepInput

    d_in = x.shape[-1]
    sae = _build(args, True, d_in, expansion * d_in, n_heads)
    relu = args.architecture in RELU
    if relu:
        _set_relu_density(sae, x, args.relu_density)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    forward = torch.compile(sae.training_forward_pass) if args.compile else sae.training_forward_pass
    dead = None
    if args.dead_share > 0:
        draw = torch.rand(sae.cfg.d_sae, generator=torch.Generator().manual_seed(0))
        dead = (draw < args.dead_share).to(x.device)
    step_input = TrainStepInput(
        sae_in=x, coefficients={"l1": 1.0}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False
    )
    densities: list[float] = []

    def train_step() -> None:
        with _autocast(args.device, bf16):
            output = forward(step_input)
        if relu and not densities:
            densities.append(float((output.feature_acts > 0).float().mean()))
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    repeats = args.repeats if repeats is None else repeats
    ms = _median_ms(train_step, args.device, args.warmup, repeats)
    return sum(p.numel() for p in sae.parameters()), ms, densities[0] if densities else float("nan")


def _encode_ms(args: argparse.Namespace, x, n_heads: int) -> float:
    """Median ms of the inference SAE's `encode` under no_grad."""
    import torch

    d_in = x.shape[-1]
    sae = _build(args, False, d_in, EXPANSION * d_in, n_heads)

    def encode() -> None:
        with torch.no_grad():
            sae.encode(x)

    return _median_ms(encode, args.device, args.warmup, args.repeats)


def measure(args: argparse.Namespace) -> dict[str, float]:
    """One (shape, architecture) in this process: params, peak memory, float32 and bf16
    train ms, encode ms, density of the ReLU acts."""
    import torch

    if args.relu_path != "auto":  # the crossover measurement: one path whatever the density
        from sae_lens_attn.architectures import sparse_relu

        sparse_relu.SPARSE_MAX_DENSITY = 2.0 if args.relu_path == "sparse" else 0.0
    n_heads, d_head = SHAPES[args.shape]
    torch.manual_seed(0)
    x = torch.randn(args.batch, n_heads * d_head, device=args.device)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _train_step_ms(args, x[:8], n_heads, expansion=1, repeats=1)  # load kernels and thread pools
    rss_before = _rss_kib()
    params, train_ms, density = _train_step_ms(args, x, n_heads)
    peak_mib = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    )
    encode_ms = _encode_ms(args, x, n_heads)
    bf16_ms = float("nan") if args.no_bf16 else _train_step_ms(args, x, n_heads, bf16=True)[1]
    return {"params": params, "peak_mib": peak_mib, "train_ms": train_ms, "bf16_ms": bf16_ms,
            "encode_ms": encode_ms, "density": density}  # fmt: skip


def run_child(args: argparse.Namespace, shape: str, architecture: str) -> dict[str, float]:
    command = [
        sys.executable, __file__, "--child", "--shape", shape, "--architecture", architecture,
        "--device", args.device, "--batch", str(args.batch), "--k-per-head", str(args.k_per_head),
        "--warmup", str(args.warmup), "--repeats", str(args.repeats),
        "--relu-density", str(args.relu_density), "--relu-path", args.relu_path,
        "--dead-share", str(args.dead_share),
    ] + (["--compile"] if args.compile else []) + (["--no-bf16"] if args.no_bf16 else [])  # fmt: skip
    result = run_python(command, child_environment(args))
    if result.returncode != 0:
        raise SystemExit(f"error: {shape} {architecture} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def density(text: str) -> float:
    """argparse type: a share of active features in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a share of active features in (0, 1]")
    return value


def share(text: str) -> float:
    """argparse type: a share in [0, 1]."""
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a share in [0, 1]")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--batch", type=positive_int, default=4096, help="tokens per step")
    parser.add_argument("--warmup", type=positive_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--rounds", type=positive_int, default=3, help="alternated runs of every SAE")
    parser.add_argument("--shapes", type=comma_list(str), default=["gpt2-small", "gelu-2l"], help="comma list of " + ", ".join(SHAPES))
    parser.add_argument("--saes", type=comma_list(str), default=list(ARCHITECTURES), help="comma list of " + ", ".join(ARCHITECTURES))
    parser.add_argument("--k-per-head", type=positive_int, default=8, help="TopK features per head")
    parser.add_argument("--relu-density", type=density, default=0.03,
                        help="share of non-zero acts of the ReLU SAEs, set through b_enc on both sides (default 0.03)")
    parser.add_argument("--relu-path", choices=("auto", "sparse", "dense"), default="auto",
                        help="our ReLU step: chosen per step from the density (auto), or forced")
    parser.add_argument("--dead-share", type=share, default=0.0,
                        help="share of features marked dead in each step (TopK: auxiliary loss; default 0)")
    add_environment_arguments(parser)
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast training steps")
    parser.add_argument("--compile", action="store_true", help="torch.compile training_forward_pass")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=SHAPES, help=argparse.SUPPRESS)
    parser.add_argument("--architecture", choices=ARCHITECTURES, help=argparse.SUPPRESS)
    args = parse_with_smoke(parser, argv, batch=64, rounds=1, repeats=1, warmup=1, shapes=["tiny"],
                            saes=["standard", "block_diagonal", "topk", "block_diagonal_topk"])
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
        f"{args.k_per_head}, ReLU density {args.relu_density} (our path: {args.relu_path}), "
        f"dead share {args.dead_share}, "
        f"{args.rounds} alternated rounds x median of {args.repeats} after {args.warmup} warm-up, "
        f"bf16={'off' if args.no_bf16 else 'autocast column'}, compile={args.compile}, "
        f"{environment_summary(args)}"
    )
    rounds: dict[tuple[str, str], list[dict[str, float]]] = {}
    for round_index in range(args.rounds):
        for shape in args.shapes:
            order = args.saes if round_index % 2 == 0 else args.saes[::-1]
            for arch in order:
                rounds.setdefault((shape, arch), []).append(run_child(args, shape, arch))
    header = (f"{'shape':<11} {'sae':<20} {'d_in':>5} {'d_sae':>6} {'params':>11} {'peak MiB':>9} "
              f"{'train ms':>9} {'bf16 ms':>9} {'encode ms':>10} {'density':>8}")  # fmt: skip
    print(header)
    print("-" * len(header))
    speedups: dict[str, tuple[float, float, float]] = {}
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
                f"{row['peak_mib']:>9.0f} {row['train_ms']:>9.1f} {row['bf16_ms']:>9.1f} "
                f"{row['encode_ms']:>10.1f} {row['density']:>8.4f}"
            )
        relu = topk = bf16 = float("nan")
        if {"standard", "block_diagonal"} <= rows.keys():
            relu, bf16 = _ratio_row(shape, "standard / ours", rows["standard"], rows["block_diagonal"])
        theirs_topk = [arch for arch in ("topk", "topk_sparse") if arch in rows]
        if theirs_topk and "block_diagonal_topk" in rows:
            best = min(theirs_topk, key=lambda arch: rows[arch]["train_ms"])  # SAELens's faster mode
            topk = _ratio_row(shape, f"{best} / ours", rows[best], rows["block_diagonal_topk"])[0]
        speedups[shape] = (relu, topk, bf16)
    print(f"load average after: {load_average()}")
    relu, topk, bf16 = speedups[args.shapes[0]]
    print(f"train_step_speedup={relu:.2f} topk_train_step_speedup={topk:.2f} bf16_train_step_speedup={bf16:.2f}")


def _ratio_row(shape: str, label: str, theirs: dict[str, float], ours: dict[str, float]) -> tuple[float, float]:
    """Prints theirs / ours per column; returns the float32 and bf16 train step ratios."""
    ratios = {key: theirs[key] / ours[key] for key in ("params", "peak_mib", "train_ms", "bf16_ms", "encode_ms")}
    print(
        f"{shape:<11} {label:<20} {'':>5} {'':>6} {ratios['params']:>10.1f}x "
        f"{ratios['peak_mib']:>8.1f}x {ratios['train_ms']:>8.1f}x {ratios['bf16_ms']:>8.1f}x "
        f"{ratios['encode_ms']:>9.1f}x"
    )
    return ratios["train_ms"], ratios["bf16_ms"]


if __name__ == "__main__":
    main()
