"""Thread settings on a shared CPU: the demo's inner loop under each setting, quiet and
next to one competing CPU-bound process.

    python benchmarks/threads.py [--iterations 12] [--settings 1:PASSIVE,2:PASSIVE,2:unset] [--smoke]

The workload is what the demo repeats (sizes of the full demo): the embedded model's
forward pass to layer 1's hook_z on 8 prompts of 128 tokens, then one training step
(forward, MSE + L1 loss, backward, Adam) of a block-diagonal and of a standard SAE on
those 1024 tokens (d_in 128, d_sae 1024). Each setting runs in a fresh child process,
because `OMP_NUM_THREADS` and `OMP_WAIT_POLICY` are read when torch starts; "unset"
leaves the variable out (torch's default: one thread per core, OpenMP's default wait
policy, whose idle threads spin for a while). The competitor is a pure-Python busy loop
in its own process, started before and stopped after each loaded measurement.

Prints wall and CPU seconds per iteration and the 1-minute load average before each
row; the last line is `loaded_speedup=<torch default / sae_lens_attn default, loaded>
quiet_ratio=<sae_lens_attn default / torch default, quiet>`. `--smoke`: the first two
settings, one iteration each.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time

from _bench import machine_summary, parse_with_smoke, run_python

LAST_LINE_KEYS = ("loaded_speedup", "quiet_ratio")
D_SAE = 1024
PROMPTS, CONTEXT = 8, 128


def busy_loop() -> None:
    """A CPU-bound competitor: spins until killed."""
    while True:
        pass


def measure(iterations: int) -> dict[str, float]:
    """Median wall seconds and mean CPU seconds per iteration, in this process."""
    import statistics

    import torch
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    from sae_lens_attn import BlockDiagonalTrainingSAE, BlockDiagonalTrainingSAEConfig
    from sae_lens_attn.models import load_embedded_model

    torch.manual_seed(0)
    model = load_embedded_model()
    n_heads, d_head = model.cfg.n_heads, model.cfg.d_head
    d_in = n_heads * d_head
    tokens = torch.randint(1, model.cfg.d_vocab, (PROMPTS, CONTEXT))
    common = {"d_in": d_in, "d_sae": D_SAE, "device": "cpu", "dtype": "float32"}
    saes = [
        BlockDiagonalTrainingSAE(BlockDiagonalTrainingSAEConfig(n_heads=n_heads, **common)),
        StandardTrainingSAE(StandardTrainingSAEConfig(**common)),
    ]
    optimizers = [torch.optim.Adam(sae.parameters(), lr=1e-4) for sae in saes]

    def iteration() -> None:
        with torch.no_grad():
            _, cache = model.run_with_cache(
                tokens, names_filter="blocks.1.attn.hook_z", stop_at_layer=2
            )
        x = cache["blocks.1.attn.hook_z"].reshape(-1, d_in)
        step = TrainStepInput(
            sae_in=x,
            coefficients={"l1": 1.0},
            dead_neuron_mask=None,
            n_training_steps=0,
            is_logging_step=False,
        )
        for sae, optimizer in zip(saes, optimizers, strict=True):
            sae.training_forward_pass(step).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    for _ in range(2):
        iteration()
    walls = []
    cpu_start = time.process_time()
    for _ in range(iterations):
        start = time.perf_counter()
        iteration()
        walls.append(time.perf_counter() - start)
    cpu = (time.process_time() - cpu_start) / iterations
    return {"wall_s": statistics.median(walls), "cpu_s": cpu, "threads": torch.get_num_threads()}


def run_setting(threads: str, policy: str, iterations: int) -> dict[str, float]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
    }
    if threads != "unset":
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    if policy != "unset":
        env["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, __file__, "--child", "--iterations", str(iterations)]
    result = run_python(command, env)
    if result.returncode != 0:
        raise RuntimeError(f"setting {threads}:{policy} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument(
        "--settings",
        default="unset:unset,1:PASSIVE,2:PASSIVE,2:ACTIVE",
        help="comma list of THREADS:WAIT_POLICY ('unset' leaves it out); the "
        "first is torch's default, the second the policy compared with it",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parse_with_smoke(parser, iterations=1, settings="unset:unset,1:PASSIVE")
    if args.child:
        print(json.dumps(measure(args.iterations)))
        return
    settings = [tuple(item.split(":")) for item in args.settings.split(",")]
    print(
        f"{os.cpu_count()} CPUs; workload per iteration: hook_z forward {PROMPTS}x{CONTEXT} "
        f"tokens + block-diagonal and standard SAE train steps (d_sae {D_SAE}); "
        f"median of {args.iterations}; {machine_summary()}"
    )
    header = f"{'threads':>7} {'wait policy':>11} {'competitor':>10} {'load 1m':>7} {'wall s':>7} {'cpu s':>6}"
    print(header)
    print("-" * len(header))
    results: dict[tuple[str, str, bool], float] = {}
    for loaded in (False, True):
        for threads, policy in settings:
            competitor = multiprocessing.Process(target=busy_loop, daemon=True) if loaded else None
            if competitor is not None:
                competitor.start()
                time.sleep(1.0)
            try:
                load = os.getloadavg()[0]
                row = run_setting(threads, policy, args.iterations)
            finally:
                if competitor is not None:
                    competitor.terminate()
                    competitor.join()
            results[threads, policy, loaded] = row["wall_s"]
            print(
                f"{threads:>7} {policy:>11} {'1 busy' if loaded else 'none':>10} {load:>7.2f} "
                f"{row['wall_s']:>7.3f} {row['cpu_s']:>6.3f}"
            )
    default, ours = settings[0], settings[1]
    print(
        f"loaded_speedup={results[(*default, True)] / results[(*ours, True)]:.2f} "
        f"quiet_ratio={results[(*ours, False)] / results[(*default, False)]:.2f}"
    )


if __name__ == "__main__":
    main()
