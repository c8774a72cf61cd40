"""The per-head products against SAELens's one large GEMM: layouts and batching, timed.

    python benchmarks/block_products.py [--batch 4096] [--shape gpt2-small] [--repeats 5]
        [--threads N] [--compile] [--smoke]

At gpt2-small's hook_z shape (12 heads x 64, d_sae 24576) the encoder's product
`[batch, H * d_head] -> [batch, H * m]` is timed several ways, in float32 and bf16:

- `bmm, strided out` (what `block_ops.heads_matmul` does): one `torch.bmm` over heads
  reading the input and writing the `[batch, H * m]` output through strided views;
- `bmm, contiguous + copy`: one `torch.bmm` into a head-major `[H, batch, m]` buffer,
  then a copy into `[batch, H * m]`;
- `loop of mm`: one `torch.mm` per head into its slice of the output;
- `compiled bmm` (with `--compile`): the product under `torch.compile` (its compilation
  takes minutes on a loaded 2-core machine, so `--smoke` leaves it out);
- `dense GEMM (SAELens)`: `x @ W` with a dense `[H * d_head, H * m]` matrix, the product
  SAELens's standard SAE computes (H times the arithmetic);

and the encoder's weight gradient (`heads_outer`, `[H, d_head, m]` from the input and a
`[batch, H * m]` gradient) as one bmm and as a loop. Each row gives the median ms of
`--repeats` calls and the arithmetic rate (GFLOP/s, `2 * batch * d_in * d_sae` for the
dense GEMM, 1/H of it for the others). The last line is
`block_gflops_ratio=<bmm strided out / dense GEMM, float32>`: how close the per-head
products come to the large GEMM's efficiency. `--smoke` runs tiny shapes in seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _bench import add_environment_arguments, environment_summary, load_average, parse_with_smoke

from sae_lens_attn.commands._values import positive_int

SHAPES = {"gpt2-small": (12, 64), "gelu-2l": (8, 64), "tiny": (4, 8)}  # n_heads, d_head
EXPANSION = 32
LAST_LINE_KEYS = ("block_gflops_ratio",)


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def products(x, blocks, dense, compile_: bool):
    """`{name: zero-argument callable}` for the encoder's forward product."""
    import torch

    from sae_lens_attn.architectures.block_ops import heads_matmul

    n_heads, d_head, per_head = blocks.shape

    def contiguous_then_copy():
        rows = x.view(-1, n_heads, d_head).transpose(0, 1).contiguous()
        return torch.bmm(rows, blocks).transpose(0, 1).reshape(x.shape[0], n_heads * per_head)

    def loop_of_mm():
        out = x.new_empty(x.shape[0], n_heads * per_head)
        for h in range(n_heads):
            out[:, h * per_head : (h + 1) * per_head] = x[:, h * d_head : (h + 1) * d_head] @ blocks[h]
        return out

    timed = {
        "bmm, strided out": lambda: heads_matmul(x, blocks),
        "bmm, contiguous + copy": contiguous_then_copy,
        "loop of mm": loop_of_mm,
    }
    if compile_:
        compiled = torch.compile(heads_matmul, dynamic=False)
        timed["compiled bmm"] = lambda: compiled(x, blocks)
    return {**timed, "dense GEMM (SAELens)": lambda: x @ dense}


def weight_gradients(x, grad, n_heads: int):
    """`{name: callable}` for the encoder's weight gradient `[H, d_head, m]`."""
    import torch

    from sae_lens_attn.architectures.block_ops import heads_outer

    d_head, per_head = x.shape[-1] // n_heads, grad.shape[-1] // n_heads

    def loop():
        return torch.stack([
            x[:, h * d_head : (h + 1) * d_head].t() @ grad[:, h * per_head : (h + 1) * per_head]
            for h in range(n_heads)
        ])  # fmt: skip

    return {"weight grad: one bmm": lambda: heads_outer(x, grad, n_heads), "weight grad: loop of mm": loop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=positive_int, default=4096)
    parser.add_argument("--shape", choices=SHAPES, default="gpt2-small")
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time the product under torch.compile")
    add_environment_arguments(parser)
    args = parse_with_smoke(parser, None, batch=64, shape="tiny", repeats=1)
    import torch

    from sae_lens_attn.architectures.block_ops import block_diagonal_dense

    if args.threads:
        torch.set_num_threads(args.threads)
    n_heads, d_head = SHAPES[args.shape]
    d_in = n_heads * d_head
    d_sae = EXPANSION * d_in
    print(f"batch {args.batch}, {args.shape} shape (d_in {d_in}, d_sae {d_sae}), median of {args.repeats}, "
          f"{environment_summary(args)}")  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    header = f"{'product':<26} {'dtype':<9} {'ms':>9} {'GFLOP/s':>9}"
    print(header)
    print("-" * len(header))
    rates: dict[tuple[str, str], float] = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(args.batch, d_in, generator=generator).to(dtype)
        blocks = torch.randn(n_heads, d_head, d_sae // n_heads, generator=generator).to(dtype)
        dense = block_diagonal_dense(blocks)
        grad = torch.randn(args.batch, d_sae, generator=generator).to(dtype)
        block_flops = 2 * args.batch * d_in * d_sae / n_heads
        timed = {**products(x, blocks, dense, args.compile), **weight_gradients(x, grad, n_heads)}
        for name, fn in timed.items():
            ms = _median_ms(fn, args.repeats)
            flops = block_flops * (n_heads if name.startswith("dense") else 1)
            rates[(name, str(dtype))] = flops / ms / 1e6
            print(f"{name:<26} {str(dtype).removeprefix('torch.'):<9} {ms:>9.1f} {rates[(name, str(dtype))]:>9.1f}")
    print(f"load average after: {load_average()}")
    ratio = rates[("bmm, strided out", "torch.float32")] / rates[("dense GEMM (SAELens)", "torch.float32")]
    print(f"block_gflops_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
