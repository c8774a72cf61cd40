"""Dead features, explained variance and CE loss recovered of hook_z SAEs by initialisation.

On the embedded model, layer 1, every SAE of the table trains from one model pass per
batch (`train_hook_z_saes`: same tokens in the same order, same seed): per-head TopK
(block_diagonal, k per head) and per-head ReLU, each with every initialisation asked for
(`--inits`, `b_dec:decoder` pairs, see `sae_lens_attn.architectures.data_init`). Then each
SAE is checked on held-out tokens of the corpus's test split:

- dead: features that never fire on `--dead-tokens` held-out tokens (`sae_lens_attn.dead`,
  the same count as `train` prints), overall and the worst head;
- explained variance, CE loss recovered and L0 from SAELens's evals on 4 x 8 held-out
  prompts (as `train` prints them).

Last line: `dead_share_<arch>_<b_dec>_<decoder>=...` for every SAE, then (with TopK) `best_topk_init=`
(the TopK initialisation with the fewest dead features) and `best_topk_dead_share=`.

    python benchmarks/initialisation.py [--training-tokens 1000000] [--expansion-factor 32] [--k 5]
    python benchmarks/initialisation.py --smoke   # tiny shapes, seconds
"""

from __future__ import annotations

import argparse
import math
import os
import time

LAST_LINE_KEYS = ("dead_share_*", "best_topk_init", "best_topk_dead_share")

DEFAULT_INITS = "zeros:kaiming,mean:kaiming,geometric_median:kaiming,geometric_median:active_subspace"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--training-tokens", type=int, default=1_000_000)
    parser.add_argument("--expansion-factor", type=int, default=32)
    parser.add_argument("--k", type=int, default=5, help="per-head TopK: features per head and token")
    parser.add_argument("--l1-coefficient", type=float, default=2.0, help="per-head ReLU's L1 coefficient")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--inits", default=DEFAULT_INITS, help="comma list of b_dec:decoder pairs")
    parser.add_argument("--architectures", default="topk,relu", help="comma list of topk, relu")
    parser.add_argument("--dead-tokens", type=int, default=100_000)
    parser.add_argument("--dead-feature-window", type=int, default=None,
                        help="SAELens's dead_feature_window in steps (TopK's auxiliary loss; default SAELens's 1000)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: seconds, for the test")
    args = parser.parse_args()
    if args.smoke:
        args.training_tokens, args.expansion_factor, args.k = 4096, 2, 2
        args.batch_size, args.dead_tokens = 512, 1024
        args.inits = "zeros:kaiming,geometric_median:active_subspace"
    return args


def main() -> None:
    args = parse_args()
    import torch

    from benchmarks._bench import load_average
    from sae_lens_attn.architectures.init_options import SAEInit
    from sae_lens_attn.attribution.firing import count_firings
    from sae_lens_attn.attribution.head_evals import sae_feature_heads
    from sae_lens_attn.models import corpus_dataset, load_embedded_model
    from sae_lens_attn.training import HookZSAESpec, evaluate_hook_z_sae, train_hook_z_saes

    context = 128
    model = load_embedded_model()
    train_rows = corpus_dataset(context, math.ceil(args.training_tokens / context) + 64)
    held_out = corpus_dataset(context, max(32, math.ceil(args.dead_tokens / context)), split="test")
    held_tokens = torch.tensor(held_out["input_ids"])
    architectures = {
        "topk": {"activation": "topk", "k": args.k},
        "relu": {"l1_coefficient": args.l1_coefficient},
    }
    architectures = {name: architectures[name] for name in args.architectures.split(",")}
    inits = {pair: SAEInit(*pair.split(":")) for pair in args.inits.split(",")}
    specs = [
        HookZSAESpec(1, None, "block_diagonal", kwargs, args.expansion_factor,
                     name=f"{arch}_{pair.replace(':', '+')}", init=init if init.needs_data else None)
        for arch, kwargs in architectures.items() for pair, init in inits.items()
    ]  # fmt: skip
    runner = {} if args.dead_feature_window is None else {"dead_feature_window": args.dead_feature_window}
    print(f"embedded model, layer 1, {args.training_tokens:,} training tokens, expansion {args.expansion_factor}, "
          f"k {args.k} per head (topk), l1 {args.l1_coefficient} (relu), lr {args.lr}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, load average before: {load_average()}")
    start = time.perf_counter()
    trained = train_hook_z_saes(
        model, specs, dataset=train_rows, training_tokens=args.training_tokens, context_size=context,
        lr=args.lr, train_batch_size_tokens=args.batch_size, runner_kwargs=runner,
    )
    train_s = time.perf_counter() - start
    rows, last, shares = [], {}, {}
    for name, (sae, layout) in trained.items():
        dead = count_firings(model, sae, layout, held_tokens)
        heads = dead.per_head_share(sae_feature_heads(sae, layout.n_heads), layout.n_heads)
        metrics = evaluate_hook_z_sae(sae, model, held_out.select(range(32)), n_batches=4, batch_size_prompts=8)
        rows.append((name, f"{dead.share:.1%}", f"{heads.max():.1%}", f"{metrics['l0']:.1f}",
                     f"{metrics['explained_variance']:.3f}", f"{metrics['ce_loss_score']:.3f}"))
        shares[name] = round(dead.share, 4)
        last[f"dead_share_{name.replace('+', '_')}"] = shares[name]  # keys: [A-Za-z0-9_]
    label = dead.label
    print(f"trained {len(specs)} SAEs in {train_s:.0f} s; load average after: {load_average()}")
    header = ("SAE (arch_b_dec+decoder)", label, "worst head", "L0", "explained var.", "CE rec.")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)))
    topk = {name: share for name, share in shares.items() if name.startswith("topk_")}
    if topk:
        best = min(topk, key=topk.get)
        last["best_topk_init"] = best.removeprefix("topk_")
        last["best_topk_dead_share"] = topk[best]
    print(" ".join(f"{key}={value}" for key, value in last.items()))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
