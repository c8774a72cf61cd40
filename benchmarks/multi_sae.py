"""Four hook_z SAEs from one model pass per batch vs four separate runs.

The four SAEs are layers 0 and 1 x block_diagonal and standard on the embedded model,
with the `train` command's defaults (expansion factor 8, batch 4096 tokens, context 128,
L1 coefficient 1). "one pass" is `train_hook_z_saes` (SAELens's `MultiSAETrainingRunner`
through `HookZMultiSAETrainingRunner`); "separate" is `train_hook_z_sae` four times. Both
train on the same corpus rows, so every SAE sees the same tokens in the same order (the
one-pass SAEs equal the separate ones: tests/test_multi_training.py). Wall time includes
everything a user waits for (runner set-up, training, saving to a temporary folder);
tokens/s counts SAE training tokens (4 x --training-tokens) per second. CPU seconds (this
process) are shown too: on a shared machine they vary less than wall time. The two modes
alternate for `--repeats` rounds; the table shows medians. Last lines:
`one_pass_cpu_speedup=` and `one_pass_speedup=<separate / one pass wall time>`.

    python benchmarks/multi_sae.py [--training-tokens 65536] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

LAYERS = (0, 1)
ARCHITECTURES = ("block_diagonal", "standard")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--training-tokens", type=int, default=65_536, help="tokens per SAE")
    parser.add_argument("--batch-size", type=int, default=4096, help="training batch in tokens")
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--expansion-factor", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of both modes")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch is imported
    import torch

    torch.set_num_threads(args.threads)
    from sae_lens_attn.models import corpus_dataset, load_embedded_model
    from sae_lens_attn.sources import HookZSAESpec, train_hook_z_sae, train_hook_z_saes

    model = load_embedded_model().to(args.device)
    rows = corpus_dataset(args.context_size, -(-args.training_tokens // args.context_size))
    specs = [
        HookZSAESpec(layer, architecture=architecture, expansion_factor=args.expansion_factor,
                     sae_kwargs={"l1_coefficient": 1.0})
        for layer in LAYERS
        for architecture in ARCHITECTURES
    ]
    run = dict(dataset=rows, training_tokens=args.training_tokens, context_size=args.context_size,
               train_batch_size_tokens=args.batch_size, device=args.device)

    def one_pass() -> None:
        train_hook_z_saes(model, specs, **run)

    def separate() -> None:
        for spec in specs:
            train_hook_z_sae(model, spec.layer, architecture=spec.architecture,
                             expansion_factor=spec.expansion_factor,
                             sae_kwargs=dict(spec.sae_kwargs), **run)

    seconds: dict[str, list[float]] = {"one pass": [], "separate": []}
    cpu_seconds: dict[str, list[float]] = {"one pass": [], "separate": []}
    for _ in range(args.repeats):
        for name, train in (("separate", separate), ("one pass", one_pass)):
            start, cpu_start = time.perf_counter(), time.process_time()
            train()
            seconds[name].append(time.perf_counter() - start)
            cpu_seconds[name].append(time.process_time() - cpu_start)
    load = os.getloadavg()
    total_tokens = len(specs) * args.training_tokens
    print(f"\n{len(specs)} SAEs (layers {list(LAYERS)} x {', '.join(ARCHITECTURES)}) on the embedded "
          f"model, {args.training_tokens:,} tokens each, batch {args.batch_size}, context "
          f"{args.context_size}, expansion {args.expansion_factor}, device {args.device}, "
          f"{args.threads} thread(s), load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'mode':<10} {'wall s (median)':>16} {'SAE tokens/s':>14} {'CPU s (median)':>15}  wall s of each round")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu_seconds.items()}
    for name, median in medians.items():
        rounds = ", ".join(f"{value:.1f}" for value in seconds[name])
        print(f"{name:<10} {median:>16.1f} {total_tokens / median:>14,.0f} {cpu_medians[name]:>15.1f}  {rounds}")
    # CPU time (this process) is the steadier figure on a shared machine; wall time is the key
    print(f"one_pass_cpu_speedup={cpu_medians['separate'] / cpu_medians['one pass']:.2f}")
    print(f"one_pass_speedup={medians['separate'] / medians['one pass']:.2f}")


if __name__ == "__main__":
    main()
