"""End-to-end training throughput on hook_z: our path vs SAELens's own runner.

    python benchmarks/training_throughput.py [--device cuda] [--training-tokens 40960]
        [--rounds 3] [--threads N] [--huge-pages] [--autocast] [--compile]

A random-weight TransformerLens model with gelu-2l's shapes (2 layers, d_model 512,
8 heads x 64, MLP 2048, vocabulary 48262, LayerNorm, GELU) reads random tokens
(`--context` per row). Both sides train an SAE on `blocks.1.attn.hook_z` with d_sae
16384, 4096 tokens per batch, the same learning rate, buffer and store settings:

- ours: `train_hook_z_sae(model, 1, architecture="block_diagonal")` (our hook_z source,
  block-diagonal SAE, SAELens's trainer inside);
- SAELens: `LanguageModelSAETrainingRunner` with its own `ActivationsStore` on
  `blocks.1.attn.hook_z` and a standard (dense) SAE.

Each run is a fresh child process (same environment: threads, huge pages) timed from the
call to the trained SAE on disk, so model forward passes, activation buffering,
training steps and saving all count. The sides alternate `--rounds` times; the table
shows tokens/s of every run and the median. The last line is
`train_throughput_ratio=<ours / SAELens>` (medians). `--smoke`: one round of one batch
per side.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
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

from sae_lens_attn.commands._values import positive_int

LAYER, N_HEADS, D_HEAD, D_SAE, BATCH = 1, 8, 64, 16384, 4096
SIDES = ("ours", "saelens")
STORE_BATCH_PROMPTS = 16
LAST_LINE_KEYS = ("train_throughput_ratio",)


def gelu_2l_shaped_model(device: str):
    """Random weights, gelu-2l's shapes (no hub access)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=512, n_heads=N_HEADS, d_head=D_HEAD, d_mlp=2048, d_vocab=48262,
        n_ctx=1024, act_fn="gelu", normalization_type="LN", seed=0, device=device,
        model_name="gelu-2l-random",
    )  # fmt: skip
    model = HookedTransformer(cfg)
    model.eval()
    return model


def run_side(args: argparse.Namespace) -> dict[str, float]:
    """Train one side in this process; wall seconds from the call to the saved SAE."""
    import torch

    model = gelu_2l_shaped_model(args.device)
    # SAELens's mixing buffer holds n_batches_in_buffer * context tokens: two batches, as
    # train_hook_z_sae picks by default; given to both sides
    buffer_batches = max(4, math.ceil(2 * BATCH / args.context))
    # enough rows for training, the buffer and the runner's evals: no token is reused
    n_rows = math.ceil((args.training_tokens + 2 * buffer_batches * args.context) / args.context) + 4 * STORE_BATCH_PROMPTS
    tokens = torch.randint(0, model.cfg.d_vocab, (n_rows, args.context), generator=torch.Generator().manual_seed(0))
    common = {
        "n_batches_in_buffer": buffer_batches,
        "n_eval_batches": 2,
        "verbose": False,
        "autocast": args.autocast,  # bf16 autocast around SAE training steps
        "compile_sae": args.compile,
    }
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        if args.side == "ours":
            from sae_lens_attn.training.train import train_hook_z_sae

            train_hook_z_sae(
                model, LAYER, architecture="block_diagonal", dataset=tokens,
                training_tokens=args.training_tokens, d_sae=D_SAE, train_batch_size_tokens=BATCH,
                store_batch_size_prompts=STORE_BATCH_PROMPTS, device=args.device, output_path=out,
                runner_kwargs=common,
            )  # fmt: skip
        else:
            train_with_saelens(args, model, tokens, out, common)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens_per_s": args.training_tokens / seconds}


def train_with_saelens(args: argparse.Namespace, model, tokens, out: str, common: dict) -> None:
    """SAELens's runner and ActivationsStore on hook_z, standard SAE, nothing of ours."""
    import torch
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAEConfig

    from sae_lens_attn._upstream import disable_datasets_torchvision_formatting
    from sae_lens_attn.sources.tokens import as_token_dataset

    disable_datasets_torchvision_formatting()  # datasets 3.6 + torchvision 0.29 (upstream-notes)
    torch.manual_seed(42)
    cfg = LanguageModelSAERunnerConfig(
        sae=StandardTrainingSAEConfig(d_in=N_HEADS * D_HEAD, d_sae=D_SAE, device=args.device),
        model_name=model.cfg.model_name, hook_name=f"blocks.{LAYER}.attn.hook_z", dataset_path="",
        context_size=args.context, training_tokens=args.training_tokens,
        train_batch_size_tokens=BATCH, store_batch_size_prompts=STORE_BATCH_PROMPTS, lr=3e-4,
        device=args.device, seed=42, logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None,
        output_path=out, model_from_pretrained_kwargs={}, **common,
    )  # fmt: skip
    LanguageModelSAETrainingRunner(cfg, override_dataset=as_token_dataset(tokens), override_model=model).run()


def run_child(args: argparse.Namespace, side: str) -> dict[str, float]:
    command = [
        sys.executable, __file__, "--child", side, "--device", args.device, "--context", str(args.context),
        "--training-tokens", str(args.training_tokens),
    ] + (["--autocast"] if args.autocast else []) + (["--compile"] if args.compile else [])  # fmt: skip
    result = run_python(command, child_environment(args))
    if result.returncode != 0:
        raise SystemExit(f"error: the {side} run failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--training-tokens", type=positive_int, default=10 * BATCH,
                        help=f"tokens each side trains on (default {10 * BATCH}: 10 batches)")
    parser.add_argument("--context", type=positive_int, default=256, help="tokens per row")
    parser.add_argument("--rounds", type=positive_int, default=3, help="alternated runs of each side")
    parser.add_argument("--autocast", action="store_true", help="SAELens's autocast=True (bf16) on both sides")
    parser.add_argument("--compile", action="store_true", help="SAELens's compile_sae=True on both sides")
    add_environment_arguments(parser)
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parse_with_smoke(parser, argv, training_tokens=BATCH, rounds=1)
    require_device(parser, args.device)
    args.side = args.child
    return args


def main() -> None:
    args = parse_args()
    if args.child:
        print(json.dumps(run_side(args)))
        return

    print(
        f"device={args.device}, gelu-2l shapes (random weights), hook blocks.{LAYER}.attn.hook_z, "
        f"d_sae {D_SAE}, batch {BATCH} tokens, {args.training_tokens} training tokens per run, "
        f"context {args.context}, {args.rounds} alternated rounds, autocast={args.autocast}, "
        f"compile_sae={args.compile}, {environment_summary(args)}"
    )
    runs: dict[str, list[float]] = {side: [] for side in SIDES}
    for round_index in range(args.rounds):
        for side in SIDES if round_index % 2 == 0 else SIDES[::-1]:
            runs[side].append(run_child(args, side)["tokens_per_s"])
    print(f"{'side':<9} {'runs (tokens/s)':<34} {'median tokens/s':>16}")
    labels = {"ours": "ours (train_hook_z_sae, block_diagonal)", "saelens": "SAELens (runner + ActivationsStore, standard)"}
    for side in SIDES:
        runs_text = ", ".join(f"{value:.0f}" for value in runs[side])
        print(f"{side:<9} {runs_text:<34} {statistics.median(runs[side]):>16.0f}   {labels[side]}")
    print(f"load average after: {load_average()}")
    ratio = statistics.median(runs["ours"]) / statistics.median(runs["saelens"])
    print(f"train_throughput_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
