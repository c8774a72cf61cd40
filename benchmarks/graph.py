"""Attribution graphs (`build_graph`): time, peak memory and closure.

- gpt2-small's shape: a random 12-layer HookedTransformer with gpt2-small's config (no
  download), one dense 24,576-feature StandardSAE per layer (1.8 GB of encoder and decoder
  weights in all; a block-diagonal one would be 1/12 of that), its encoder bias set so that
  about 20 features fire per token, and a 64-token random prompt; the root is the logit of
  the last token, so every layer is expanded.
- The embedded model: its two layers with random 2048-feature SAEs (L0 about 20), on the
  README's `_` induction prompt, from the logit of `_`.

`graph_s` times `build_graph` alone (the model and SAEs already built);
`graph_peak_rss_mb` is the process's peak RSS while `build_graph` runs, the resident model
and SAEs included (the peak is reset once they are built; the peak of building them is
printed beside it). `--smoke` runs a 2-layer stand-in in
seconds. Last line: `graph_s= graph_peak_rss_mb= embedded_graph_s= closure_max_abs=` (the
largest error of the graph's closure).

    python benchmarks/graph.py [--threads 2] [--smoke]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

LAST_LINE_KEYS = ("graph_s", "graph_peak_rss_mb", "embedded_graph_s", "closure_max_abs")

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args() -> argparse.Namespace:
    from _bench import add_environment_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_environment_arguments(parser)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, seconds")
    parser.add_argument("--l0", type=float, default=20.0, help="features firing per token")
    return parser.parse_args()


def random_saes(model, d_sae: int, tokens, l0: float):
    """One dense SAE per layer, its encoder bias a threshold that lets about `l0` features
    fire per token of `tokens` (set from the layer's own pre-activations)."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    cfg = model.cfg
    d_in = cfg.n_heads * cfg.d_head
    _, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n.endswith("hook_z"))
    saes = []
    for layer in range(cfg.n_layers):
        torch.manual_seed(layer)
        sae = StandardSAE(
            StandardSAEConfig(
                d_in=d_in,
                d_sae=d_sae,
                metadata=SAEMetadata(hook_name=f"blocks.{layer}.attn.hook_z"),
            )
        ).requires_grad_(False)
        x = cache[f"blocks.{layer}.attn.hook_z"][0].flatten(1)
        pre = (x - sae.b_dec) @ sae.W_enc
        threshold = pre.flatten().kthvalue(int(pre.numel() * (1 - l0 / d_sae))).values
        sae.b_enc.fill_(-float(threshold))
        saes.append(sae)
    return saes


def rss_mb(field: str) -> float:
    """`VmRSS` or `VmHWM` (peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def release_free_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc `malloc_trim`), so that the
    RSS before the graph is what is alive, not what building the SAEs left behind."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the RSS keeps the freed heap
        pass


def reset_peak_rss() -> None:
    """Start `VmHWM` again from the current RSS (Linux: `clear_refs` 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def timed_graph(model, saes, tokens, **root):
    """The graph, its wall and CPU seconds."""
    from sae_lens_attn.attribution.graph import build_graph

    start, cpu = time.perf_counter(), time.process_time()
    graph = build_graph(model, saes, tokens, **root)
    return graph, time.perf_counter() - start, time.process_time() - cpu


def describe(name: str, graph, seconds: float) -> str:
    n_features = int((graph.nodes.kind == 2).sum())
    return (
        f"{name:<22} {seconds:>8.2f} {graph.n_nodes:>7} {n_features:>9} "
        f"{int(graph.kept.sum()):>6} {len(graph.edges):>6} {graph.closure_max_abs:>10.1e} "
        f"{graph.scores.replacement:>6.3f} {graph.scores.completeness:>6.3f}"
    )


def main() -> int:
    args = parse_args()
    from sae_lens_attn.runtime import apply_runtime_settings, configure_torch, resolve_settings

    # the CLI's policy (idle OpenMP threads sleep), set before torch is imported
    configure_torch(apply_runtime_settings(resolve_settings(args.threads, args.huge_pages)))
    import torch
    from _bench import environment_summary, load_average
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from sae_lens_attn.models import load_embedded_model

    torch.set_grad_enabled(False)
    print(f"graph benchmark: {environment_summary(args)}")
    print(
        f"{'run':<22} {'graph_s':>8} {'nodes':>7} {'features':>9} {'kept':>6} {'edges':>6} "
        f"{'closure':>10} {'repl':>6} {'compl':>6}"
    )

    embedded = load_embedded_model()
    prompt = embedded.to_tokens("max_size = 10\nmax")[0]
    saes = random_saes(embedded, 2048, prompt, args.l0)
    underscore = int(embedded.to_tokens("_", prepend_bos=False)[0, 0])
    small, embedded_s, _ = timed_graph(embedded, saes, prompt, logit_token=underscore)
    print(describe("embedded (2 layers)", small, embedded_s))
    del saes

    if args.smoke:
        shape = dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=500)
        d_sae, n_tokens = 512, 16
    else:
        shape = dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257)
        d_sae, n_tokens = 24576, 64
    torch.manual_seed(0)
    model = HookedTransformer(
        HookedTransformerConfig(
            **shape,
            n_ctx=1024,
            act_fn="gelu_new",
            normalization_type="LN",
            device="cpu",
            positional_embedding_type="standard",
        )
    ).eval()
    tokens = torch.randint(
        0, shape["d_vocab"], (n_tokens,), generator=torch.Generator().manual_seed(0)
    )
    saes = random_saes(model, d_sae, tokens, args.l0)
    release_free_memory()
    before_mb = rss_mb("VmRSS")
    reset_peak_rss()
    big, graph_s, graph_cpu_s = timed_graph(model, saes, tokens, logit_token=int(tokens[-1]))
    peak_mb = rss_mb("VmHWM")
    name = "gpt2-small shape" if not args.smoke else "smoke stand-in"
    print(describe(f"{name} ({shape['n_layers']} layers)", big, graph_s))
    process_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    closure = max(small.closure_max_abs, big.closure_max_abs)
    print(
        f"dense SAEs, d_sae {d_sae}, L0 target {args.l0:g}, {n_tokens}-token prompt; graph "
        f"CPU time {graph_cpu_s:.1f} s; RSS {before_mb:.0f} MB with the model and SAEs built, "
        f"peak {peak_mb:.0f} MB while the graph ran (process peak, building included: "
        f"{process_peak_mb:.0f} MB); load average after: {load_average()}"
    )
    print(
        f"graph_s={graph_s:.2f} graph_peak_rss_mb={peak_mb:.0f} embedded_graph_s={embedded_s:.2f} "
        f"closure_max_abs={closure:.2e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
