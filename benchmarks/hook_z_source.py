"""hook_z activations for SAE training: our source vs SAELens's own `ActivationsStore`.

Both stores are built from the same `LanguageModelSAERunnerConfig`, model, hook and
pretokenized rows; each step is one `get_raw_llm_batch()` (the store's whole path from
token rows to `[tokens, d_in]` activations, as the trainer's buffer calls it). SAELens runs
`run_with_cache(stop_at_layer=L+1)` and flattens the heads; ours stops inside layer L
right after hook_z (no W_O, no MLP of layer L, no ActivationCache). The two are timed in
alternation, `--repeats` rounds of `--batches` batches each; the table shows the median
round. The last line is `source_throughput_ratio=<ours / SAELens>` (higher is better).
`--smoke`: one round of one batch of 2 x 32 tokens.

Models: `embedded` (the shipped 2-layer model, if built) or `random-gelu-2l` (random
weights with gelu-2l's shapes: 2 layers, d_model 512, 8 heads x 64, d_mlp 2048, vocab
48262; only the shapes matter for speed).

    python benchmarks/hook_z_source.py [--model random-gelu-2l] [--layer 1] [--threads 1] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _bench import build_model, machine_summary, parse_with_smoke

LAST_LINE_KEYS = ("source_throughput_ratio",)


def build_stores(model, layer: int, context_size: int, batch_prompts: int, n_rows: int):
    import torch
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig, StandardTrainingSAEConfig
    from sae_lens.training.activations_store import ActivationsStore

    from sae_lens_attn._upstream import disable_datasets_torchvision_formatting
    from sae_lens_attn.sources import HookZActivationsStore, HookZSource
    from sae_lens_attn.sources.tokens import as_token_dataset

    disable_datasets_torchvision_formatting()
    source = HookZSource(model, layer)
    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=source.d_in, d_sae=source.d_in),
        hook_name=source.hook_name,
        context_size=context_size,
        store_batch_size_prompts=batch_prompts,
        training_tokens=n_rows * context_size,
        train_batch_size_tokens=batch_prompts * context_size,
        logger=LoggingConfig(log_to_wandb=False),
        checkpoint_path=None,
        output_path=None,
        verbose=False,
    )
    tokens = torch.randint(
        0, model.cfg.d_vocab, (n_rows, context_size), generator=torch.Generator().manual_seed(0)
    )
    ours = HookZActivationsStore.from_source(source, cfg, as_token_dataset(tokens))
    theirs = ActivationsStore.from_config(model, cfg, override_dataset=as_token_dataset(tokens))
    return {"sae_lens ActivationsStore": theirs, "ours HookZActivationsStore": ours}


def time_round(store, n_batches: int) -> float:
    """Tokens per second over `n_batches` calls of `get_raw_llm_batch`."""
    n_tokens = 0
    start = time.perf_counter()
    for _ in range(n_batches):
        n_tokens += store.get_raw_llm_batch()[0].shape[0]
    return n_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random-gelu-2l", choices=["embedded", "random-gelu-2l"])
    parser.add_argument("--layer", type=int, default=1)
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--batch-prompts", type=int, default=8)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parse_with_smoke(parser, context_size=32, batch_prompts=2, batches=1, repeats=1)

    import logging

    import torch

    torch.set_num_threads(args.threads)
    logging.getLogger("sae_lens").setLevel(logging.CRITICAL)  # upstream logs a view error per batch
    model = build_model(args.model)
    stores = build_stores(model, args.layer, args.context_size, args.batch_prompts, n_rows=64)
    for store in stores.values():  # warm-up
        time_round(store, 1)
    rates: dict[str, list[float]] = {name: [] for name in stores}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, store in stores.items():
                rates[name].append(time_round(store, args.batches))

    print(
        f"model {args.model}, hook blocks.{args.layer}.attn.hook_z (all {model.cfg.n_heads} heads), "
        f"{args.batch_prompts} x {args.context_size} tokens per batch, {args.threads} thread(s), "
        f"median of {args.repeats} rounds of {args.batches} batches, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; {machine_summary()}"
    )
    print(f"{'store':<28}{'tokens/s':>12}{'min':>12}{'max':>12}")
    medians = {}
    for name, values in rates.items():
        medians[name] = statistics.median(values)
        print(f"{name:<28}{medians[name]:>12.0f}{min(values):>12.0f}{max(values):>12.0f}")
    ratio = medians["ours HookZActivationsStore"] / medians["sae_lens ActivationsStore"]
    print(f"source_throughput_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
