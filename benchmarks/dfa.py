"""DFA by source position: ours vs sae_dashboard's `DFACalculator`, time and peak memory.

gpt2-small's attention shape (12 heads x 64, d_sae 24576) with random weights: 16 prompts
x 128 tokens, 1000 features, each at its own destination per prompt (as sae_dashboard
picks the max-activating position). Each method runs in a fresh subprocess; peak memory
is the growth of the process's peak RSS over its RSS once the inputs exist (CPU), or
`torch.cuda.max_memory_allocated` over the inputs (CUDA).

Rows: sae_dashboard's `DFACalculator.calculate`; our `dfa_by_source` (the same output:
per source position, summed over heads); our `feature_dfa` (per source position AND head,
plus bias terms: 12x more output). The last line is the like-for-like ratio,
`dfa_peak_memory_ratio=<sae_dashboard / ours_by_source>`. `--smoke`: 2 prompts, 20
features, one run per method.

    python benchmarks/dfa.py [--device cuda] [--threads 1] [--repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from _bench import machine_summary, parse_with_smoke, run_python

N_PROMPTS, SEQ, N_HEADS, D_HEAD, D_SAE, N_FEATURES, LAYER = 16, 128, 12, 64, 24576, 1000, 5
METHODS = ("sae_dashboard", "ours_by_source", "ours_by_source_and_head")
LAST_LINE_KEYS = ("dfa_peak_memory_ratio",)


def make_inputs(device: str, n_prompts: int, n_features: int):
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(0)  # the SAE's own initialisation
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(n_prompts, N_HEADS, SEQ, SEQ, generator=generator)
    causal = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1).to(device)
    v = torch.randn(n_prompts, SEQ, N_HEADS, D_HEAD, generator=generator).to(device)
    sae = StandardSAE(StandardSAEConfig(d_in=N_HEADS * D_HEAD, d_sae=D_SAE, device=device))
    features = torch.randperm(D_SAE, generator=generator)[:n_features].tolist()
    dest = torch.randint(0, SEQ, (n_prompts, n_features), generator=generator).to(device)
    del scores
    return pattern, v, sae.requires_grad_(False), features, dest


def gpt2_small_stand_in():
    """DFACalculator reads only `model.cfg`; building gpt2-small's weights is not needed."""
    from types import SimpleNamespace

    from transformer_lens import HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=12,
        d_model=768,
        n_heads=N_HEADS,
        d_head=D_HEAD,
        d_mlp=3072,
        n_ctx=1024,
        d_vocab=50257,
        act_fn="gelu",
        normalization_type="LN",
        device="cpu",
    )
    return SimpleNamespace(cfg=cfg)


def run_method(method: str, device: str, n_prompts: int, n_features: int):
    """Returns a `[n_features, n_prompts, seq]` array of DFA by source position."""
    import numpy as np
    import torch
    from sae_dashboard.dfa_calculator import DFACalculator

    from sae_lens_attn.attribution import dfa_by_source, dfa_hook_names, feature_dfa

    pattern, v, sae, features, dest = make_inputs(device, n_prompts, n_features)
    torch.cuda.synchronize() if device.startswith("cuda") else None
    baseline = current_memory(device)
    start = time.perf_counter()
    with torch.no_grad():
        if method == "sae_dashboard":
            pattern_name, v_name = dfa_hook_names(LAYER)
            results = DFACalculator(gpt2_small_stand_in(), sae).calculate(
                {pattern_name: pattern, v_name: v}, LAYER, features, dest
            )
            out = np.stack([results[f]["dfa_values"] for f in features])
        elif method == "ours_by_source":
            out = dfa_by_source(pattern, v, sae.W_enc[:, features], dest).transpose(0, 1)
            out = out.cpu().numpy()
        else:
            dfa = feature_dfa(sae, pattern, v, features, dest)
            out = dfa.by_source_head.sum(-1).transpose(0, 1).cpu().numpy()
    torch.cuda.synchronize() if device.startswith("cuda") else None
    seconds = time.perf_counter() - start
    return out, seconds, peak_memory(device) - baseline


def current_memory(device: str) -> int:
    import psutil
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return psutil.Process().memory_info().rss


def peak_memory(device: str) -> int:
    import resource

    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    method, check = args.worker, args.check
    torch.set_num_threads(args.threads)
    out, seconds, memory = run_method(method, args.device, args.n_prompts, args.n_features)
    result = {"method": method, "seconds": seconds, "peak_bytes": memory}
    if check:
        reference = np.load(check)
        result["max_abs_diff"] = float(np.abs(out - reference).max())
    else:
        np.save(os.environ["DFA_BENCH_OUT"], out)
    print(json.dumps(result))


def spawn(method: str, args: argparse.Namespace, check: str | None) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        method,
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--n-prompts",
        str(args.n_prompts),
        "--n-features",
        str(args.n_features),
    ]
    if check:
        command += ["--check", check]
    done = run_python(command, {**os.environ, "DFA_BENCH_OUT": args.reference})
    if done.returncode:
        raise SystemExit(f"{method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs per method (median time)")
    parser.add_argument("--n-prompts", type=int, default=N_PROMPTS, help=argparse.SUPPRESS)
    parser.add_argument("--n-features", type=int, default=N_FEATURES, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--check", help=argparse.SUPPRESS)
    args = parse_with_smoke(parser, n_prompts=2, n_features=20, repeats=1)
    if args.worker:
        worker(args)
        return

    print(
        f"DFA, gpt2-small shape: {args.n_prompts} prompts x {SEQ} tokens, {N_HEADS} heads x "
        f"{D_HEAD}, {args.n_features} of {D_SAE} features; device {args.device}, "
        f"{args.threads} thread(s), median of {args.repeats}, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; {machine_summary()}"
    )
    rows = {}
    with tempfile.TemporaryDirectory(prefix="dfa-bench-") as scratch:
        args.reference = os.path.join(scratch, "reference.npy")  # sae_dashboard's output
        for method in METHODS:
            check = None if method == "sae_dashboard" else args.reference
            runs = [spawn(method, args, check) for _ in range(args.repeats)]
            runs.sort(key=lambda run: run["seconds"])
            rows[method] = runs[len(runs) // 2] | {"peak_bytes": max(r["peak_bytes"] for r in runs)}
    print(f"{'method':<26} {'time (s)':>9} {'peak memory (MB)':>17} {'max |diff|':>11}")
    for method, row in rows.items():
        diff = f"{row['max_abs_diff']:.1e}" if "max_abs_diff" in row else "reference"
        print(f"{method:<26} {row['seconds']:>9.3f} {row['peak_bytes'] / 1e6:>17.1f} {diff:>11}")
    theirs, ours = rows["sae_dashboard"], rows["ours_by_source"]
    with_heads = rows["ours_by_source_and_head"]
    print(
        f"speed-up (by source): {theirs['seconds'] / ours['seconds']:.1f}x; "
        f"with the per-head split: {theirs['seconds'] / with_heads['seconds']:.1f}x faster, "
        f"{theirs['peak_bytes'] / with_heads['peak_bytes']:.1f}x less memory"
    )
    print(f"dfa_peak_memory_ratio={theirs['peak_bytes'] / ours['peak_bytes']:.1f}")


if __name__ == "__main__":
    main()
