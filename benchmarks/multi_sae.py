"""Four hook_z SAEs from one model pass per batch vs four separate runs.

The four SAEs are layers 0 and 1 x block_diagonal and standard on the embedded model,
with the `train` command's defaults (expansion factor 8, batch 4096 tokens, context 128;
L1 coefficient 1). Every SAE sees the same tokens in the same order in both modes (the
one-pass SAEs equal the separate ones: tests/test_multi_training.py). Two levels:

- **command**: what a user types. "one pass" is one `sae-lens-attn train --layers 0,1
  --architecture block_diagonal,standard` process; "separate" is four `sae-lens-attn
  train --layer L --architecture A` processes, one after the other. Wall time counts
  everything a user waits for: start-up, model and corpus loading, training, SAELens's
  evals, saving.
- **api**: in one Python process with the model loaded once. "one pass" is
  `train_hook_z_saes` (SAELens's `MultiSAETrainingRunner` through
  `HookZMultiSAETrainingRunner`); "separate" is `train_hook_z_sae` four times. This
  isolates what sharing the model's forward pass saves, from runner set-up to the SAE
  saved in a temporary folder.

Tokens/s counts SAE training tokens (4 x --training-tokens) per second; CPU seconds (this
process at the api level, the child processes at the command level) are shown too: on a
shared machine they vary less than wall time. The two modes alternate for `--repeats`
rounds; the table shows medians. Last lines: `one_pass_api_cpu_speedup=`,
`one_pass_api_speedup=`, `one_pass_command_speedup=` (when measured) and
`one_pass_speedup=<separate / one pass wall time>` at the command level (the api level
when only that ran). `--smoke`: the api level only, 2048 tokens per SAE in batches of
512, one round.

`--model gpt2-small-shape` runs the api level on a random-weight model with gpt2-small's
shapes (12 layers, 12 heads x 64, vocabulary 50257) reading random tokens, where the
forward pass to a deep layer costs far more than the embedded model's; `--layers` picks
the layers (the command level needs the embedded model).

    python benchmarks/multi_sae.py [--training-tokens 65536] [--threads 2] [--repeats 3] [--levels command,api]
    python benchmarks/multi_sae.py --model gpt2-small-shape --layers 10,11 --training-tokens 16384 --repeats 1
    python benchmarks/multi_sae.py --smoke
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

from _bench import machine_summary, parse_with_smoke, run_python

from sae_lens_attn.commands._values import comma_list, non_negative_int, positive_int

LAST_LINE_KEYS = ("one_pass_speedup",)

MODELS = ("embedded", "gpt2-small-shape")
LEVELS = ("command", "api")
MODES = ("separate", "one pass")
ARCHITECTURES = ("block_diagonal", "standard")


def gpt2_small_shaped_model(device: str):
    """Random weights with gpt2-small's shapes (no hub access)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024, d_vocab=50257,
        act_fn="gelu_new", normalization_type="LN", seed=0, device=device, model_name="gpt2-small-random",
    )  # fmt: skip
    return HookedTransformer(cfg).eval()


def model_and_rows(name: str, device: str, context_size: int, n_rows: int):
    """The model and `n_rows` training rows of `context_size` tokens: the embedded model
    and its corpus, or the gpt2-small-shaped model and random tokens."""
    import torch

    from sae_lens_attn.models import corpus_dataset, load_embedded_model

    if name == "embedded":
        return load_embedded_model().to(device), corpus_dataset(context_size, n_rows)
    model = gpt2_small_shaped_model(device)
    generator = torch.Generator().manual_seed(0)
    return model, torch.randint(0, model.cfg.d_vocab, (n_rows, context_size), generator=generator)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def command_level(args: argparse.Namespace) -> dict[str, Callable[[], None]]:
    """The two modes as `sae-lens-attn train` processes (`python -m sae_lens_attn`)."""
    common = [
        "--training-tokens", str(args.training_tokens), "--batch-size", str(args.batch_size),
        "--context-size", str(args.context_size), "--expansion-factor", str(args.expansion_factor),
        "--l1-coefficient", "1", "--threads", str(args.threads), "--device", args.device,
    ]  # fmt: skip

    def train(*selection: str) -> None:
        with tempfile.TemporaryDirectory() as out:
            command = [
                sys.executable,
                "-m",
                "sae_lens_attn",
                "train",
                *selection,
                *common,
                "--out",
                out,
            ]
            done = run_python(command)
            if done.returncode:
                raise SystemExit(f"error: {' '.join(command)} failed:\n{done.stderr[-3000:]}")

    layers = ",".join(map(str, args.layers))

    def separate() -> None:
        for layer in args.layers:
            for architecture in ARCHITECTURES:
                train("--layer", str(layer), "--architecture", architecture)

    return {
        "separate": separate,
        "one pass": lambda: train("--layers", layers, "--architecture", ",".join(ARCHITECTURES)),
    }


def api_level(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> dict[str, Callable[[], None]]:
    """The two modes as Python calls in this process, the model loaded once."""
    from sae_lens_attn.training import HookZSAESpec, train_hook_z_sae, train_hook_z_saes

    model, rows = model_and_rows(
        args.model, args.device, args.context_size, -(-args.training_tokens // args.context_size)
    )
    if max(args.layers) >= model.cfg.n_layers:
        parser.error(f"--layers: the {args.model} model has layers 0..{model.cfg.n_layers - 1}")
    specs = [
        HookZSAESpec(
            layer,
            architecture=architecture,
            expansion_factor=args.expansion_factor,
            sae_kwargs={"l1_coefficient": 1.0},
        )
        for layer in args.layers
        for architecture in ARCHITECTURES
    ]
    run = dict(
        dataset=rows,
        training_tokens=args.training_tokens,
        context_size=args.context_size,
        train_batch_size_tokens=args.batch_size,
        device=args.device,
    )

    def separate() -> None:
        for spec in specs:
            train_hook_z_sae(
                model,
                spec.layer,
                architecture=spec.architecture,
                expansion_factor=spec.expansion_factor,
                sae_kwargs=dict(spec.sae_kwargs),
                **run,
            )

    return {"separate": separate, "one pass": lambda: train_hook_z_saes(model, specs, **run)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--training-tokens", type=positive_int, default=65_536, help="tokens per SAE"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=4096, help="training batch in tokens"
    )
    parser.add_argument("--context-size", type=positive_int, default=128)
    parser.add_argument("--expansion-factor", type=positive_int, default=8)
    parser.add_argument(
        "--threads", type=positive_int, default=2, help="torch intra-op threads (both levels)"
    )
    parser.add_argument("--repeats", type=positive_int, default=3, help="rounds of both modes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="embedded",
        help="the embedded model and corpus, or gpt2-small's shapes with random weights and tokens",
    )
    parser.add_argument(
        "--layers",
        type=comma_list(non_negative_int),
        default=[0, 1],
        help="comma-separated layers, each trained with every architecture",
    )
    parser.add_argument(
        "--levels",
        type=comma_list(str),
        default=list(LEVELS),
        help="command (train processes), api (Python calls), or both",
    )
    args = parse_with_smoke(
        parser, levels=["api"], training_tokens=2048, batch_size=512, context_size=64, repeats=1
    )
    if not set(args.levels) <= set(LEVELS):
        parser.error(f"--levels: choose from {', '.join(LEVELS)}")
    if "command" in args.levels and args.model != "embedded":
        parser.error(
            "--levels command needs --model embedded (the CLI loads the embedded model or hub models)"
        )
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported
    import torch

    torch.set_num_threads(args.threads)
    levels = {
        level: command_level(args) if level == "command" else api_level(args, parser)
        for level in LEVELS
        if level in args.levels
    }
    seconds = {(level, mode): [] for level in levels for mode in MODES}
    cpu_seconds = {(level, mode): [] for level in levels for mode in MODES}
    for _ in range(args.repeats):
        for level, modes in levels.items():
            for mode in MODES:
                start, cpu_start = time.perf_counter(), time.process_time() + children_cpu_seconds()
                modes[mode]()
                seconds[level, mode].append(time.perf_counter() - start)
                cpu_seconds[level, mode].append(
                    time.process_time() + children_cpu_seconds() - cpu_start
                )
    load = os.getloadavg()
    total_tokens = len(args.layers) * len(ARCHITECTURES) * args.training_tokens
    print(
        f"\n{len(args.layers) * len(ARCHITECTURES)} SAEs (layers {args.layers} x {', '.join(ARCHITECTURES)}) "
        f"on the {args.model} model, {args.training_tokens:,} tokens each, batch {args.batch_size}, context "
        f"{args.context_size}, expansion {args.expansion_factor}, device {args.device}, "
        f"{args.threads} thread(s), load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {machine_summary()}"
    )
    print(
        f"{'level':<8} {'mode':<9} {'wall s (median)':>16} {'SAE tokens/s':>14} {'CPU s (median)':>15}  "
        "wall s of each round"
    )
    medians = {key: statistics.median(values) for key, values in seconds.items()}
    cpu_medians = {key: statistics.median(values) for key, values in cpu_seconds.items()}
    for (level, mode), median in medians.items():
        rounds = ", ".join(f"{value:.1f}" for value in seconds[level, mode])
        print(
            f"{level:<8} {mode:<9} {median:>16.1f} {total_tokens / median:>14,.0f} "
            f"{cpu_medians[level, mode]:>15.1f}  {rounds}"
        )
    speedups = {level: medians[level, "separate"] / medians[level, "one pass"] for level in levels}
    if "api" in levels:
        # CPU time (this process) is the steadier figure on a shared machine; wall time is the key
        print(
            f"one_pass_api_cpu_speedup={cpu_medians['api', 'separate'] / cpu_medians['api', 'one pass']:.2f}"
        )
        print(f"one_pass_api_speedup={speedups['api']:.2f}")
    if "command" in levels:
        print(f"one_pass_command_speedup={speedups['command']:.2f}")
    print(f"one_pass_speedup={speedups.get('command', speedups.get('api')):.2f}")


if __name__ == "__main__":
    main()
