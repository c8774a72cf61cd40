"""Feature-family detectors on every feature of a gpt2-small-shaped SAE: time and memory.

A HookedTransformer with gpt2-small's shape (12 layers, d_model 768, 12 heads x 64,
vocabulary 50257, random weights) and a dense hook_z SAE with 24576 features (random
weights) on `blocks.{layer}.attn.hook_z`. Each detector runs once on all features, in a
fresh subprocess; peak memory is the growth of the process's peak RSS over its RSS once
the model and SAE exist. Enrichment uses 10 random token sets (the model has no
tokenizer) of sizes 25000, 12000, 5000, 2000, 1000, 500, 200, 100, 50 and 20 tokens.
Induction tests every feature (no evaluation tokens: all features are live) with
`--n-prompts` prompts per distinct top token. CPU time (user + system, all threads) is
shown beside wall time because the machine may be shared; so is the 1-minute load
average at the end of each run.

    python benchmarks/detectors.py [--threads 2] [--layer 0] [--n-prompts 8] [--detectors ...]
        [--n-features N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

D_SAE, D_VOCAB = 24576, 50257
SET_SIZES = (25000, 12000, 5000, 2000, 1000, 500, 200, 100, 50, 20)
DETECTORS = ("logit_lens", "enrichment", "induction")


def build(layer: int):
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from sae_lens_attn.sources.head_layout import HeadLayout

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024,
        d_vocab=D_VOCAB, act_fn="gelu_new", normalization_type="LN", device="cpu", seed=0,
    )
    model = HookedTransformer(cfg).eval().requires_grad_(False)
    layout = HeadLayout.for_model(model, layer)
    sae = StandardSAE(StandardSAEConfig(d_in=layout.d_in, d_sae=D_SAE)).requires_grad_(False)
    layout.store_in(sae)
    return model, sae, layout


def token_sets() -> dict[str, list[int]]:
    import torch

    generator = torch.Generator().manual_seed(1)
    return {
        f"random_{size}": torch.randperm(D_VOCAB, generator=generator)[:size].tolist()
        for size in SET_SIZES
    }


def worker(name: str, layer: int, threads: int, n_prompts: int, n_features: int) -> None:
    import resource

    import psutil
    import torch

    from sae_lens_attn.detectors.results import family_summary
    from sae_lens_attn.plugins import get_plugin_manager

    torch.set_num_threads(threads)
    model, sae, layout = build(layer)
    options = {
        "n_prompts": n_prompts,
        "token_sets": token_sets() if name == "enrichment" else None,
        "features": range(n_features) if n_features < D_SAE else None,
    }
    detector = get_plugin_manager().get("detector", name)
    baseline = psutil.Process().memory_info().rss
    start, cpu_start = time.perf_counter(), time.process_time()
    rows = detector.detect(model, sae, layout, **{k: v for k, v in options.items() if v is not None})
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline  # Linux: KiB
    summary = family_summary(rows)[name]
    found = {family: stats["count"] for family, stats in summary["families"].items()}
    print(json.dumps({"detector": name, "seconds": seconds, "cpu_seconds": cpu_seconds,
                      "peak_bytes": peak, "rows": len(rows), "layer": layout.layer,
                      "families": found, "load_average": os.getloadavg()[0]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("--detectors", default=",".join(DETECTORS))
    parser.add_argument("--n-features", type=int, default=D_SAE, help="analyse features 0..N-1 only")
    parser.add_argument("--worker", choices=DETECTORS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.layer, args.threads, args.n_prompts, args.n_features)
        return

    print(f"detectors on {args.n_features} of the {D_SAE} features of a dense SAE on blocks.{args.layer}.attn.hook_z, "
          f"gpt2-small shape (random weights, vocabulary {D_VOCAB}), CPU, {args.threads} thread(s)")
    print(f"{'detector':<12} {'time (s)':>9} {'CPU time (s)':>13} {'peak memory (MB)':>17} "
          f"{'load avg':>9}  families found")
    total = 0.0
    for name in args.detectors.split(","):
        command = [sys.executable, __file__, "--worker", name, "--layer", str(args.layer),
                   "--threads", str(args.threads), "--n-prompts", str(args.n_prompts),
                   "--n-features", str(args.n_features)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        total += row["seconds"] if name != "induction" else 0.0
        print(f"{name:<12} {row['seconds']:>9.1f} {row['cpu_seconds']:>13.1f} "
              f"{row['peak_bytes'] / 1e6:>17.0f} {row['load_average']:>9.1f}  {row['families']}")
    if {"logit_lens", "enrichment"} <= set(args.detectors.split(",")):
        print(f"logit-lens stats + enrichment over {len(SET_SIZES)} token sets: {total:.1f} s "
              f"(target: under 120 s)")


if __name__ == "__main__":
    main()
