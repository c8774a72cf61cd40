"""The L0 / CE-recovered frontier of every architecture on the embedded model, layer 1.

Two one-pass sweeps (SAELens's multi-SAE runner: every SAE of a sweep sees the same
tokens in the same order, one model forward pass per batch), then the default SAE:

1. **equal tokens**: every architecture available (per-head: `block_diagonal` TopK and
   ReLU, plus `block_diagonal_batchtopk` / `block_diagonal_jumprelu` when registered;
   dense: SAELens's topk, batchtopk, jumprelu, standard) at three sparsities aimed at L0
   8, 20 and 40, all on `--training-tokens` tokens; TopK of both families also with the
   data-driven initialisation (mean b_dec, active-subspace decoder: `... init` lines);
2. **longer per-head runs**: the per-head architectures again on twice the tokens, so the
   equal-time view can give them the wall-clock budget a dense SAE used;
3. **the default**: `train --layer 1` with every other option at its default (a child
   process, exactly what a user runs);
4. **dead share at expansion 32**: the default per-head architecture at expansion 32
   with three initialisations (SAELens's; mean b_dec with the active-subspace decoder;
   mean b_dec with the k-means decoder), dead = never fires on
   `--dead-tokens` held-out tokens; the best initialisation's share is reported.

Every SAE trains with `train`'s dead-feature defaults: resampling every 16,384 tokens until
80% of the run (`sae_lens_attn.training.resampling`) and, on the per-head TopK SAEs, the
silent-feature bias lift (`sae_lens_attn.training.silent_bias`). Each SAE is evaluated as
`train` does (SAELens's evals and the per-head evals on 4 x 8 held-out prompts) and the
frontier files (`sae_lens_attn.training.frontier`) are written to
`--out/frontier`. CE loss recovered at L0 8/20/40 is interpolated along each
architecture's line linearly in log(L0) between the two SAEs that bracket the target (no
extrapolation). Equal time compares, at each target L0, every architecture within the
smallest budget all of them reached (seconds of a run of that SAE alone: its own steps
plus all shared model passes, see `training.timing`); sweeps 1 and 2 run one after the
other on the same machine, so a change in load between them shifts the equal-time view:
the load average is printed before and after each.

Last line: `frontier_min_gap_equal_tokens= frontier_min_gap_equal_time= default_l0=
default_ce= dead_share_x32=` (gaps: best per-head minus best dense CE recovered, the
minimum over L0 8/20/40).

    python benchmarks/frontier.py [--threads 2] [--training-tokens 100000] [--out DIR]
    python benchmarks/frontier.py --smoke      # tiny shapes, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

from _bench import load_average

from sae_lens_attn.commands._values import positive_int
from sae_lens_attn.dead import DEAD_WINDOW_TOKENS

TRAIN_REVIVAL = {"resample_every_tokens": DEAD_WINDOW_TOKENS, "silent_bias_lift": True}  # train's defaults
LAST_LINE_KEYS = ("frontier_min_gap_equal_tokens", "frontier_min_gap_equal_time", "default_l0", "default_ce", "dead_share_x32")

LAYER = 1
TARGET_L0S = (8, 20, 40)
PER_HEAD_K = (2, 5, 10)  # per head, x 4 heads = L0 8, 20, 40 on the embedded model
L1_COEFFICIENTS = (4.0, 8.0, 16.0)
# the data-driven initialisation (docs/initialisation.md) given to TopK in both families
DATA_INIT = {"b_dec": "mean", "decoder": "active_subspace"}
# label -> (architecture, [knobs per sweep point], per-head[, SAEInit fields])
SWEEP = {
    "block_diagonal topk": ("block_diagonal", [{"activation": "topk", "k": k} for k in PER_HEAD_K], True),
    "block_diagonal topk init": (
        "block_diagonal", [{"activation": "topk", "k": k} for k in PER_HEAD_K], True, DATA_INIT,
    ),
    "block_diagonal_batchtopk": ("block_diagonal_batchtopk", [{"k": k} for k in PER_HEAD_K], True),
    "block_diagonal_jumprelu": (
        "block_diagonal_jumprelu",
        [{"jumprelu_sparsity_loss_mode": "quadratic", "target_l0": float(t)} for t in TARGET_L0S],
        True,
    ),
    "block_diagonal relu": ("block_diagonal", [{"l1_coefficient": c} for c in L1_COEFFICIENTS], True),
    "topk": ("topk", [{"k": k} for k in TARGET_L0S], False),
    "topk init": ("topk", [{"k": k} for k in TARGET_L0S], False, DATA_INIT),
    "batchtopk": ("batchtopk", [{"k": k} for k in TARGET_L0S], False),
    "jumprelu": (
        "jumprelu",
        [{"jumprelu_sparsity_loss_mode": "quadratic", "target_l0": float(t)} for t in TARGET_L0S],
        False,
    ),
    "standard": ("standard", [{"l1_coefficient": c} for c in L1_COEFFICIENTS], False),
}


def knob_text(knobs: dict) -> str:
    return ",".join(f"{key}={value:g}" for key, value in knobs.items() if not isinstance(value, str))


def specs(labels, expansion_factor: int):
    from sae_lens_attn.architectures.init_options import SAEInit
    from sae_lens_attn.training.multi_training import HookZSAESpec

    return [
        HookZSAESpec(LAYER, None, SWEEP[label][0], knobs, expansion_factor,
                     name=f"{label.replace(' ', '_')}_{knob_text(knobs)}",
                     init=SAEInit(**SWEEP[label][3]) if len(SWEEP[label]) > 3 else None)
        for label in labels
        for knobs in SWEEP[label][1]
    ]


def available(labels):
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    from sae_lens_attn.plugins import register_architectures_with_sae_lens

    register_architectures_with_sae_lens()
    return [label for label in labels if SWEEP[label][0] in SAE_TRAINING_CLASS_REGISTRY]


def sweep(model, labels, out: Path, settings, tokens: int, held_out) -> float:
    """Train `labels` in one pass into `out`, evaluate each SAE as `train` does and list
    them with their metrics in `out/saes.json`; the wall-clock seconds of training."""
    from sae_lens_attn.commands import train as train_command
    from sae_lens_attn.training.multi_training import train_hook_z_saes
    from sae_lens_attn.training.outputs import sae_list_entry, training_metrics, write_sae_list

    began = time.perf_counter()
    trained = train_hook_z_saes(
        model, specs(labels, settings.expansion_factor), dataset=settings.train_rows, training_tokens=tokens,
        context_size=settings.context_size, lr=settings.lr, train_batch_size_tokens=settings.batch_size,
        output_path=out, seed=0, **TRAIN_REVIVAL,
    )
    seconds = time.perf_counter() - began
    args = SimpleNamespace(eval_batches=settings.eval_batches)
    entries = []
    for name, (sae, layout) in trained.items():
        with contextlib.redirect_stdout(io.StringIO()):  # train's printed eval tables: the frontier sums them up
            evals = train_command.evaluate(args, model, name, sae, layout, held_out, out / name)
        metrics = {**training_metrics(sae), **evals}
        entries.append(sae_list_entry(name, layout.layer, layout.heads, sae.cfg.architecture(), name, metrics))
    write_sae_list(out, entries)
    return seconds


def default_run(settings, out: Path) -> dict:
    """`train --layer 1` with every other option at its default, as a child process."""
    command = [sys.executable, "-m", "sae_lens_attn.cli", "train", "--layer", str(LAYER), "--out", str(out),
               *settings.default_extra]
    with open(out.parent / "default_train.log", "w", encoding="utf-8") as log:  # what the user would see
        subprocess.run(command, check=True, stdout=log, env=child_env(settings))
    [entry] = json.loads((out / "saes.json").read_text())
    return entry["metrics"]


def child_env(settings) -> dict:
    env = os.environ.copy()
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(settings.threads)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


def dead_share(model, settings, out: Path) -> tuple[float, int, str]:
    """The default per-head SAE at expansion 32, trained on `--training-tokens` tokens with
    SAELens's initialisation, with the active-subspace decoder and with the k-means
    decoder, both with mean b_dec (one pass); the smallest share of features that never fire on `settings.dead_tokens`
    held-out tokens (`sae_lens_attn.dead`), with N and the initialisation reaching it."""
    import torch

    from sae_lens_attn.architectures.init_options import SAEInit
    from sae_lens_attn.attribution.firing import count_firings
    from sae_lens_attn.models import corpus_dataset
    from sae_lens_attn.training.multi_training import HookZSAESpec, train_hook_z_saes

    inits = {
        "kaiming": None,
        "active_subspace+mean": SAEInit(b_dec="mean", decoder="active_subspace"),
        "kmeans+mean": SAEInit(b_dec="mean", decoder="kmeans"),
    }
    specs = [  # train's default architecture: per-head TopK, k from d_head
        HookZSAESpec(LAYER, None, "block_diagonal", {"activation": "topk"}, 32, name=f"x32_{name}", init=init)
        for name, init in inits.items()
    ]
    trained = train_hook_z_saes(
        model, specs, dataset=settings.train_rows, training_tokens=settings.training_tokens,
        context_size=settings.context_size, lr=settings.lr, train_batch_size_tokens=settings.batch_size,
        output_path=out, seed=0, **TRAIN_REVIVAL,
    )
    rows = -(-settings.dead_tokens // settings.context_size)
    tokens = torch.tensor(corpus_dataset(settings.context_size, rows, split="test")["input_ids"])
    shares = {}
    for name, (sae, layout) in trained.items():
        dead = count_firings(model, sae, layout, tokens, batch_size=32, min_tokens=min(settings.dead_tokens, 100_000))
        shares[name.removeprefix("x32_")] = (dead.mask.float().mean().item(), dead.n_tokens)
        print(f"expansion 32, {name.removeprefix('x32_')} init: {dead.describe()}")
    best = min(shares, key=lambda name: shares[name][0])
    return shares[best][0], shares[best][1], best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and token counts: seconds, for the tests")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads here and in the child")
    parser.add_argument("--training-tokens", type=positive_int, default=100_000, help="tokens per SAE of sweep 1")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs and the frontier here (default: temporary)")
    parser.add_argument("--only", default=None,
                        help="comma-separated architecture labels of sweep 1 alone (e.g. topk), at "
                        "--expansion-factor: an extra line, such as dense TopK with a per-head SAE's "
                        "parameters (--expansion-factor 2); nothing else runs")
    parser.add_argument("--expansion-factor", type=positive_int, default=8, help="d_sae / d_in of every sweep")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # upstream's per-batch UserWarnings would drown the table
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from sae_lens_attn.commands.frontier import print_frontier
    from sae_lens_attn.models import corpus_dataset, load_embedded_model
    from sae_lens_attn.training.frontier import (
        frontier_lines,
        frontier_summary,
        read_frontier_points,
    )

    tokens = 8192 if args.smoke else args.training_tokens
    context = 32 if args.smoke else 128
    settings = SimpleNamespace(
        threads=args.threads, training_tokens=tokens, context_size=context, lr=1e-2,
        batch_size=1024 if args.smoke else 4096, expansion_factor=2 if args.smoke else args.expansion_factor,
        eval_batches=1 if args.smoke else 4, dead_tokens=4096 if args.smoke else 100_352,
        train_rows=corpus_dataset(context, 2 * tokens // context + 1, split="train"),
        default_extra=["--training-tokens", "8192", "--context-size", "32", "--batch-size", "1024",
                       "--eval-batches", "1", "--dead-tokens", "4096"] if args.smoke else [],
    )
    from sae_lens_attn.commands.train import DEFAULT_LR

    settings.lr = DEFAULT_LR
    model = load_embedded_model()
    held_out = corpus_dataset(context, 8 * settings.eval_batches, split="test")
    labels = available(SWEEP)
    missing = sorted(set(SWEEP) - set(labels))
    if args.smoke:
        labels = [label for label in labels if label in ("block_diagonal topk", "topk")]
    if args.only is not None:
        labels = [label for label in labels if label in args.only.split(",")]
        root = args.out or Path(tempfile.mkdtemp())
        seconds = sweep(model, labels, root / "equal_tokens", settings, tokens, held_out)
        print(f"{len(labels) * 3} SAEs x {tokens:,} tokens at expansion {settings.expansion_factor} in "
              f"{seconds:.0f} s (load {load_average()})")
        print_table(frontier_lines(read_frontier_points([root / "equal_tokens"])))
        return
    per_head = [label for label in labels if SWEEP[label][2]]
    print(f"frontier benchmark: embedded model layer {LAYER}, {args.threads} threads, torch {torch.__version__}, "
          f"{tokens:,} tokens per SAE (per-head also {2 * tokens:,}), lr {settings.lr:g}, batch {settings.batch_size}")
    print(f"architectures: {', '.join(labels)} (missing from the registry: "
          f"{', '.join(missing) or 'none'})")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        timings = []
        for name, chosen, n_tokens in (("equal_tokens", labels, tokens), ("per_head_long", per_head, 2 * tokens)):
            before = load_average()
            seconds = sweep(model, chosen, root / name, settings, n_tokens, held_out)
            timings.append(f"{name}: {len(chosen) * 3} SAEs x {n_tokens:,} tokens in {seconds:.0f} s "
                           f"(load {before} before, {load_average()} after)")
            print(timings[-1], flush=True)
        points = read_frontier_points([root / "equal_tokens", root / "per_head_long"])
        print_frontier(points, root / "frontier")
        summary = frontier_summary(points)
        print_table(frontier_lines(points))
        before = load_average()
        default = default_run(settings, root / "default")
        print(f"default `train --layer {LAYER}`: L0 {default['l0']:.2f}, CE recovered {default['ce_loss_score']:.3f}, "
              f"explained variance {default['explained_variance']:.3f}, {default.get('training_seconds', 0):.0f} s "
              f"(load {before} before, {load_average()} after)")
        dead, n_dead_tokens, init = dead_share(model, settings, root / "x32")
        print(f"dead share at expansion 32 (default architecture, {tokens:,} training tokens, best init "
              f"{init}): {dead:.4f} (never fired on {n_dead_tokens:,} held-out tokens)")
    print(f"frontier_min_gap_equal_tokens={_number(summary['equal_tokens']['min_gap'])} "
          f"frontier_min_gap_equal_time={_number(summary['equal_time']['min_gap'])} "
          f"default_l0={default['l0']:.2f} default_ce={default['ce_loss_score']:.4f} dead_share_x32={dead:.4f}")


def print_table(lines) -> None:
    """CE loss recovered at L0 8/20/40 per line (interpolated), with seconds alone."""
    header = f"{'architecture, tokens':<44}" + "".join(f"  CE@L0 {l0:<3}" for l0 in TARGET_L0S) + "  seconds alone"
    print(header)
    print("-" * len(header))
    for line in lines:
        values = "".join(f"  {_number(line.at_l0(l0)):>9}" for l0 in TARGET_L0S)
        seconds = [p.training_seconds_alone for p in line.points if p.training_seconds_alone is not None]
        print(f"{line.name:<44}{values}  {sum(seconds) / max(len(seconds), 1):.0f}")


def _number(value) -> str:
    return "n/a" if value is None else f"{value:+.4f}" if value < 0 else f"{value:.4f}"


if __name__ == "__main__":
    main()
