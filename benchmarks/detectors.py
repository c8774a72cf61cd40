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

Last line: `detectors_s=<wall seconds of every detector run, summed>`. `--smoke`: the
logit-lens and induction detectors on 16 features, 2 prompts each.

    python benchmarks/detectors.py [--threads 2] [--layer 0] [--n-prompts 8] [--detectors ...]
        [--n-features N] [--smoke]

`--taxonomy` times the whole source-signature taxonomy instead (issue 15): the shared
signature pass (one model pass over 64 rows of 128 tokens, every feature encoded once,
DFA at each feature's top activations), each of the five source-signature detectors'
decisions, the induction detector and the taxonomy step, on (1) the demo's SAE shape on
the embedded model (1024 features on blocks.1.attn.hook_z, the embedded corpus's test
split; `--demo-sae PATH` uses a trained one, else random weights) and (2) the
gpt2-small shape above (24576 features, random tokens). Its last line is
`taxonomy_s=<seconds for the 24576-feature run>`.

    python benchmarks/detectors.py --taxonomy [--threads 2] [--demo-sae PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _bench import machine_summary, parse_with_smoke, run_python

LAST_LINE_KEYS = ("detectors_s",)
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
        n_layers=12,
        d_model=768,
        n_heads=12,
        d_head=64,
        d_mlp=3072,
        n_ctx=1024,
        d_vocab=D_VOCAB,
        act_fn="gelu_new",
        normalization_type="LN",
        device="cpu",
        seed=0,
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
    rows = detector.detect(
        model, sae, layout, **{k: v for k, v in options.items() if v is not None}
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline  # Linux: KiB
    summary = family_summary(rows)[name]
    found = {family: stats["count"] for family, stats in summary["families"].items()}
    print(
        json.dumps(
            {
                "detector": name,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "peak_bytes": peak,
                "rows": len(rows),
                "layer": layout.layer,
                "families": found,
                "load_average": os.getloadavg()[0],
            }
        )
    )


SOURCE_DETECTORS = (
    "current_token",
    "previous_token",
    "duplicate_token",
    "local_context",
    "high_level_context",
)


def build_embedded(demo_sae: str | None):
    import torch
    from sae_lens import SAE

    from sae_lens_attn.architectures.block_diagonal import BlockDiagonalSAE, BlockDiagonalSAEConfig
    from sae_lens_attn.models import load_embedded_model
    from sae_lens_attn.sources.head_layout import HeadLayout

    model = load_embedded_model().requires_grad_(False)
    layout = HeadLayout.for_model(model, 1)
    if demo_sae:
        sae = SAE.load_from_disk(demo_sae).requires_grad_(False)
    else:
        torch.manual_seed(0)
        sae = BlockDiagonalSAE(
            BlockDiagonalSAEConfig(d_in=layout.d_in, d_sae=8 * layout.d_in, n_heads=layout.n_heads)
        ).requires_grad_(False)
        layout.store_in(sae)
    return model, sae, layout


def taxonomy_worker(config: str, threads: int, n_prompts: int, demo_sae: str | None) -> None:
    """Time every part of the taxonomy on one configuration; prints one JSON line."""
    import resource

    import psutil
    import torch

    from sae_lens_attn.detectors.signature import SignatureOptions, source_signatures
    from sae_lens_attn.detectors.source_detectors import default_tokens
    from sae_lens_attn.detectors.taxonomy import TaxonomyDetector
    from sae_lens_attn.plugins import get_plugin_manager

    torch.set_num_threads(threads)
    if config == "embedded":
        model, sae, layout = build_embedded(demo_sae)
        tokens = default_tokens(model)
    else:
        model, sae, layout = build(0)
        tokens = torch.randint(0, D_VOCAB, (64, 128), generator=torch.Generator().manual_seed(0))
    options = {"tokens": tokens, "n_prompts": n_prompts}
    manager = get_plugin_manager()
    baseline = psutil.Process().memory_info().rss
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    rows = []
    start, cpu_start = time.perf_counter(), time.process_time()

    def timed(part: str, began: float, cpu_began: float) -> None:
        seconds[part] = time.perf_counter() - began
        cpu_seconds[part] = time.process_time() - cpu_began

    source_signatures(model, sae, layout, tokens, torch.arange(sae.cfg.d_sae), SignatureOptions())
    timed("signature pass", start, cpu_start)
    for name in (*SOURCE_DETECTORS, "induction"):
        began, cpu_began = time.perf_counter(), time.process_time()
        rows += manager.get("detector", name).detect(model, sae, layout, **options)
        timed(name, began, cpu_began)
    began, cpu_began = time.perf_counter(), time.process_time()
    taxonomy = TaxonomyDetector().detect(model, sae, layout, family_rows=rows, **options)
    timed("taxonomy step", began, cpu_began)
    total, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    classes: dict[str, int] = {}
    for row in taxonomy:
        key = row.family or "dead"
        classes[key] = classes.get(key, 0) + 1
    print(
        json.dumps(
            {
                "config": config,
                "d_sae": sae.cfg.d_sae,
                "seconds": seconds,
                "total": total,
                "cpu_seconds": cpu_seconds,
                "cpu_total": cpu_total,
                "peak_bytes": peak,
                "classes": classes,
                "load_average": os.getloadavg()[0],
            }
        )
    )


def run_taxonomy(args: argparse.Namespace) -> None:
    results = []
    for config in ("embedded", "gpt2"):
        command = [
            sys.executable,
            __file__,
            "--taxonomy-worker",
            config,
            "--threads",
            str(args.threads),
            "--n-prompts",
            str(args.n_prompts),
        ] + (["--demo-sae", args.demo_sae] if args.demo_sae else [])
        done = run_python(command)
        if done.returncode:
            raise SystemExit(f"taxonomy on {config} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    embedded, gpt2 = results
    sae_kind = "trained demo SAE " + args.demo_sae if args.demo_sae else "random weights"
    print(
        f"taxonomy (all detectors), CPU, {args.threads} thread(s); wall seconds per part and CPU "
        "seconds (user + system, all threads), which the shared machine's load inflates less; "
        f"{machine_summary()}"
    )
    print(
        f"  (a) embedded model, blocks.1.attn.hook_z, {embedded['d_sae']} features ({sae_kind}), "
        "64 x 128 test-split tokens"
    )
    print(
        f"  (b) gpt2-small shape, blocks.0.attn.hook_z, {gpt2['d_sae']} features (random weights), "
        "64 x 128 random tokens"
    )
    print(f"{'part':<20} {'(a) s':>9} {'(a) CPU s':>10} {'(b) s':>9} {'(b) CPU s':>10}")
    for part in embedded["seconds"]:
        print(
            f"{part:<20} {embedded['seconds'][part]:>9.1f} {embedded['cpu_seconds'][part]:>10.1f} "
            f"{gpt2['seconds'][part]:>9.1f} {gpt2['cpu_seconds'][part]:>10.1f}"
        )
    print(
        f"{'total':<20} {embedded['total']:>9.1f} {embedded['cpu_total']:>10.1f} "
        f"{gpt2['total']:>9.1f} {gpt2['cpu_total']:>10.1f}"
    )
    print(
        f"{'peak memory (MB)':<20} {embedded['peak_bytes'] / 1e6:>9.0f} {gpt2['peak_bytes'] / 1e6:>9.0f}"
    )
    print(f"{'load avg (1 min)':<20} {embedded['load_average']:>9.1f} {gpt2['load_average']:>9.1f}")
    print(f"classes (a): {embedded['classes']}")
    print(f"classes (b): {gpt2['classes']}")
    print("target for (b): under 300 s on 2 CPU cores")
    print(f"taxonomy_s={gpt2['total']:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("--detectors", default=",".join(DETECTORS))
    parser.add_argument(
        "--n-features", type=int, default=D_SAE, help="analyse features 0..N-1 only"
    )
    parser.add_argument(
        "--taxonomy", action="store_true", help="time the whole taxonomy (see above)"
    )
    parser.add_argument(
        "--demo-sae", help="a trained demo SAE folder for the taxonomy's embedded run"
    )
    parser.add_argument("--worker", choices=DETECTORS, help=argparse.SUPPRESS)
    parser.add_argument("--taxonomy-worker", choices=("embedded", "gpt2"), help=argparse.SUPPRESS)
    args = parse_with_smoke(parser, n_features=16, n_prompts=2, detectors="logit_lens,induction")
    if args.taxonomy_worker:
        taxonomy_worker(args.taxonomy_worker, args.threads, args.n_prompts, args.demo_sae)
        return
    if args.taxonomy:
        run_taxonomy(args)
        return
    if args.worker:
        worker(args.worker, args.layer, args.threads, args.n_prompts, args.n_features)
        return

    print(
        f"detectors on {args.n_features} of the {D_SAE} features of a dense SAE on blocks.{args.layer}.attn.hook_z, "
        f"gpt2-small shape (random weights, vocabulary {D_VOCAB}), CPU, {args.threads} thread(s); "
        f"{machine_summary()}"
    )
    print(
        f"{'detector':<12} {'time (s)':>9} {'CPU time (s)':>13} {'peak memory (MB)':>17} "
        f"{'load avg':>9}  families found"
    )
    total, all_seconds = 0.0, 0.0
    for name in args.detectors.split(","):
        command = [
            sys.executable,
            __file__,
            "--worker",
            name,
            "--layer",
            str(args.layer),
            "--threads",
            str(args.threads),
            "--n-prompts",
            str(args.n_prompts),
            "--n-features",
            str(args.n_features),
        ]
        done = run_python(command)
        if done.returncode:
            raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        total += row["seconds"] if name != "induction" else 0.0
        all_seconds += row["seconds"]
        print(
            f"{name:<12} {row['seconds']:>9.1f} {row['cpu_seconds']:>13.1f} "
            f"{row['peak_bytes'] / 1e6:>17.0f} {row['load_average']:>9.1f}  {row['families']}"
        )
    if {"logit_lens", "enrichment"} <= set(args.detectors.split(",")):
        print(
            f"logit-lens stats + enrichment over {len(SET_SIZES)} token sets: {total:.1f} s "
            f"(target: under 120 s)"
        )
    print(f"detectors_s={all_seconds:.1f}")


if __name__ == "__main__":
    main()
