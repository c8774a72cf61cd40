"""The atlas of a whole SAE: features per second, peak memory, and how memory grows.

(a) The demo-size SAE on the embedded model: a standard SAE with 1024 features on
`blocks.1.attn.hook_z` (expansion 8), trained here with the package's own
`train_hook_z_saes` (200k tokens, ~20 s) unless `--demo-sae PATH` names a saved one; its
atlas over all live features with the CLI's defaults (512 test-split prompts of 64 tokens,
detectors logit_lens + taxonomy, every panel).
(b) A gpt2-small-shaped random model (12 heads x 64, d_model 768, vocabulary 50257,
`--gpt2-layers` layers) with a random dense SAE of 24576 features on blocks.0: the atlas
of its first 2000 features on 128 random prompts of 64 tokens. The peak RSS is read after
every shard; its growth from the shard that reaches 1000 features to the last one is the
memory per 1000 more features (it would be ~0 for a run whose memory holds one shard).

Every atlas runs in a fresh child process (`--child`) with a wall-clock timer around each
stage: the table shows where the time goes (model load, liveness pass, detectors, sae_dashboard's runner,
our reports, panels, writing). Wall and CPU seconds (user + system, all threads) are both
shown: the machine may be shared, and the load average is printed beside each run.

(c) `export neuronpedia`'s code on the first 512 features of (b)'s SAE (one layer).

`--full` runs (b) on all 24576 features (every panel; an hour or more on 2 cores), the
growth then measured from 1000 features to the last. Each shard prints a line (features
done, peak RSS, seconds, load) to stderr as it is written, so a long run can be followed
and one cut short still tells how far it got. `--smoke`: tiny shapes, no training.

    python benchmarks/atlas.py [--threads 2] [--demo-sae PATH] [--gpt2-layers 2] [--full | --smoke]

Last line: `atlas_features_per_s=<a> atlas_peak_rss_mb=<max of a, b>
atlas_rss_growth_mb_per_1k=<b> atlas_gpt2_features_per_s=<b> atlas_site_kb_per_feature=<b>
export_features_per_s=<c>`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import machine_summary, parse_with_smoke, run_python

LAST_LINE_KEYS = (
    "atlas_features_per_s",
    "atlas_peak_rss_mb",
    "atlas_rss_growth_mb_per_1k",
    "atlas_gpt2_features_per_s",
    "atlas_site_kb_per_feature",
    "export_features_per_s",
)
D_SAE, D_VOCAB = 24576, 50257
ALL_PANELS = ("dfa", "head_attribution", "logit_lens", "families", "circuit")
# (label, module, attribute) of the stages timed, before the first shard ("startup") and
# in the shards; each is wrapped with a timer in the child (wall and CPU seconds). A label
# starting with spaces is part of the stage above it (its time is included there).
STARTUP_STAGES = (
    ("settings (checksums)", "sae_lens_attn.dashboard.atlas.build", "_settings"),
    ("liveness pass", "sae_lens_attn.dashboard.atlas.build", "live_features"),
    ("detectors", "sae_lens_attn.dashboard.atlas.build", "run_detectors"),
    (
        "  logit_lens detector",
        "sae_lens_attn.detectors.logit_lens_classes",
        "LogitLensClassDetector.detect",
    ),
    ("  taxonomy detector", "sae_lens_attn.detectors.taxonomy", "TaxonomyDetector.detect"),
    (
        "    signature pass",
        "sae_lens_attn.detectors.signature",
        "compute_source_signatures",
    ),
    ("saving detector rows", "sae_lens_attn.detectors.results", "save_family_rows"),
    ("dashboard copy of the SAE", "sae_lens_attn.dashboard.sae_vis", "dashboard_copy"),
    ("one model pass (hook_z)", "sae_lens_attn.dashboard.one_pass", "PromptActivations.collect"),
)
SHARD_STAGES = (
    ("sae_dashboard data", "sae_lens_attn.dashboard.sae_vis", "run_sae_vis"),
    ("DFA, heads, logit lens", "sae_lens_attn.dashboard.data", "feature_reports"),
    ("circuit panel prepare", "sae_lens_attn.dashboard.circuit_panel", "CircuitPanel.prepare"),
    ("panels render", "sae_lens_attn.dashboard.render", "render_panel"),
    ("  dfa panel", "sae_lens_attn.dashboard.dfa_panel", "DFAPanel.render"),
    (
        "  head_attribution panel",
        "sae_lens_attn.dashboard.heads_panel",
        "HeadAttributionPanel.render",
    ),
    ("  logit_lens panel", "sae_lens_attn.dashboard.logit_lens_panel", "LogitLensPanel.render"),
    ("  families panel", "sae_lens_attn.dashboard.families_panel", "FamilyPanel.render"),
    ("  circuit panel", "sae_lens_attn.dashboard.circuit_panel", "CircuitPanel.render"),
    ("sae_dashboard JS data", "sae_lens_attn.dashboard.page", "sae_dashboard_js_data"),
    ("writing data files", "sae_lens_attn.dashboard.atlas.build", "write_data_script"),
)
STAGES = STARTUP_STAGES + SHARD_STAGES


def time_stages() -> dict[str, list[float]]:
    """Wrap every function of `STAGES` with a timer; `{label: [wall s, CPU s]}` fills in
    as they run (the functions are looked up by their callers at call time). CPU seconds
    are the process's (user + system, all threads)."""
    import functools
    import importlib

    seconds = {label: [0.0, 0.0] for label, *_ in STAGES}
    for label, module_name, attribute in STAGES:
        owner = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        function = getattr(owner, name)

        @functools.wraps(function)
        def timed(*args, __function=function, __label=label, **kwargs):
            began, cpu = time.perf_counter(), time.process_time()
            try:
                return __function(*args, **kwargs)
            finally:
                seconds[__label][0] += time.perf_counter() - began
                seconds[__label][1] += time.process_time() - cpu

        setattr(owner, name, timed)
    return seconds


def _rows(stages: dict[str, list[float]], labels) -> list[str]:
    return [
        f"  {label:<32}{stages[label][0]:>9.1f}{stages[label][1]:>9.1f}" for label, *_ in labels
    ]


def startup_table(
    stages: dict[str, list[float]], clock: dict[str, list[float]], loaded: list[float]
) -> str:
    """Where the time before the first shard went: wall and CPU s per stage."""
    wall, cpu = clock["first_shard"]
    rows = _rows(stages, STARTUP_STAGES)
    timed = [
        sum(stages[label][i] for label, *_ in STARTUP_STAGES if label[0] != " ") for i in (0, 1)
    ]
    return "\n".join(
        [
            f"startup, before the first shard: {wall:.1f} s wall, {cpu:.1f} CPU s"
            f"{'':<4}{'wall s':>9}{'CPU s':>9}",
            f"  {'model and SAE build, imports':<32}{loaded[0]:>9.1f}{loaded[1]:>9.1f}",
            *rows,
            f"  {'other (imports, Python)':<32}{wall - loaded[0] - timed[0]:>9.1f}"
            f"{cpu - loaded[1] - timed[1]:>9.1f}",
        ]
    )


def shards_table(
    stages: dict[str, list[float]], clock: dict[str, list[float]], n_shards: int
) -> str:
    """Where the shards' time went: wall and CPU s per stage, all shards together."""
    wall, cpu = clock["shards"]
    timed = [sum(stages[label][i] for label, *_ in SHARD_STAGES if label[0] != " ") for i in (0, 1)]
    return "\n".join(
        [
            f"{n_shards} shards: {wall:.1f} s wall, {cpu:.1f} CPU s ("
            f"{wall / max(n_shards, 1):.2f} s, {cpu / max(n_shards, 1):.2f} CPU s a shard)",
            *_rows(stages, SHARD_STAGES),
            f"  {'other (index rows, packing)':<32}{wall - timed[0]:>9.1f}{cpu - timed[1]:>9.1f}",
        ]
    )


def train_demo_sae(folder: Path) -> Path:
    from sae_lens_attn.models import load_model
    from sae_lens_attn.models.dataset import corpus_tokens
    from sae_lens_attn.training.multi_training import HookZSAESpec, train_hook_z_saes

    model = load_model("embedded")
    tokens = corpus_tokens(model.tokenizer, 128, 2048, "train")
    spec = HookZSAESpec(
        1, architecture="standard", sae_kwargs={"l1_coefficient": 2.0}, name="standard"
    )
    train_hook_z_saes(
        model, [spec], dataset=tokens, training_tokens=200_000, lr=1e-3, seed=0, output_path=folder
    )
    return folder / "standard"


def gpt2_shape(n_layers: int, smoke: bool = False):
    """gpt2-small's shape (or, with `smoke`, a tiny one: 4 heads x 8, vocabulary 500, 256
    features, 16 prompts of 16 tokens): model, SAE on blocks.0, layout, prompts."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from sae_lens_attn.sources.head_layout import HeadLayout

    torch.manual_seed(0)
    n_heads, d_head, d_vocab, d_sae, shape = (
        (4, 8, 500, 256, (16, 16)) if smoke else (12, 64, D_VOCAB, D_SAE, (128, 64))
    )
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=n_heads * d_head,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=4 * n_heads * d_head,
        n_ctx=1024,
        d_vocab=d_vocab,
        act_fn="gelu_new",
        normalization_type="LN",
        device="cpu",
        seed=0,
    )
    model = HookedTransformer(cfg).eval().requires_grad_(False)
    layout = HeadLayout.for_model(model, 0)
    sae = StandardSAE(StandardSAEConfig(d_in=layout.d_in, d_sae=d_sae)).requires_grad_(False)
    layout.store_in(sae)
    tokens = torch.randint(0, d_vocab, shape, generator=torch.Generator().manual_seed(0))
    return model, sae, layout, tokens


def child(args: argparse.Namespace) -> None:
    """One atlas, its stages timed and the peak RSS read after every shard; prints one
    JSON line."""
    import resource

    from sae_lens_attn.runtime import configure_runtime, configure_torch

    configure_torch(configure_runtime(args.threads))  # as the CLI does, before torch starts
    from sae_lens_attn.dashboard.atlas import AtlasConfig, build, build_atlas

    start, cpu_start = time.perf_counter(), time.process_time()
    stages = time_stages()
    peaks: list[tuple[int, float]] = []  # (features written so far, peak RSS MB)
    # wall and CPU s: at the first shard's start (the startup), and in all shards
    clock = {"first_shard": [0.0, 0.0], "shards": [0.0, 0.0]}
    write_shard = build._write_shard

    def recording(staging, shard, features, *rest):
        began, cpu = time.perf_counter(), time.process_time()
        if not peaks:
            clock["first_shard"] = [began - start, cpu - cpu_start]
        write_shard(staging, shard, features, *rest)
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        clock["shards"][0] += wall
        clock["shards"][1] += cpu
        done = len(features) + (peaks[-1][0] if peaks else 0)
        peaks.append((done, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
        print(  # one line per shard, as it happens: a run cut short still tells its figures
            f"shard {shard}: {done} features, peak RSS {peaks[-1][1]:.0f} MB, "
            f"{time.perf_counter() - start:.0f} s (this shard {wall:.1f} s, {cpu:.1f} CPU s), "
            f"load {os.getloadavg()[0]:.1f}",
            file=sys.stderr,
            flush=True,
        )
        if len(peaks) == 1:
            print(startup_table(stages, clock, loaded), file=sys.stderr, flush=True)

    build._write_shard = recording
    loaded = [0.0, 0.0]  # wall and CPU s building the model and SAE
    if args.child == "export":
        print(json.dumps(export_child(args)))
        return
    if args.smoke:
        model, sae, _, tokens = gpt2_shape(1, smoke=True)
        features = range(args.n_features if args.child == "gpt2" else 48)
    elif args.child == "demo":
        from sae_lens_attn.commands._common import load_sae
        from sae_lens_attn.models import load_model
        from sae_lens_attn.models.dataset import corpus_tokens

        model, sae = load_model("embedded"), load_sae(Path(args.demo_sae))
        tokens = corpus_tokens(model.tokenizer, 64, 512, "test")
        features = None
    else:
        model, sae, _, tokens = gpt2_shape(args.gpt2_layers)
        features = range(args.n_features)
    loaded[:] = time.perf_counter() - start, time.process_time() - cpu_start
    with tempfile.TemporaryDirectory() as tmp:
        panels = [p for p in ALL_PANELS if p != "circuit"] if args.no_circuit else None
        config = AtlasConfig(shard_size=16) if args.smoke else None
        files = build_atlas(
            model, sae, tokens, Path(tmp) / "site", features=features, panels=panels, config=config
        )
        size = sum(f.stat().st_size for f in (Path(tmp) / "site").rglob("*") if f.is_file())
    seconds = time.perf_counter() - start
    print(shards_table(stages, clock, len(peaks)), file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "features": files.n_features,
                "seconds": seconds,
                "atlas_seconds": seconds - loaded[0],
                "cpu_seconds": time.process_time() - cpu_start,
                "load_seconds": loaded[0],
                "load_cpu_seconds": loaded[1],
                "stages": stages,
                "clock": clock,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "site_mb": size / 1e6,
                "load_average": os.getloadavg()[0],
                "peaks": peaks,
            }
        )
    )


def export_child(args: argparse.Namespace) -> dict:
    """`export neuronpedia`'s code (`export_neuronpedia`, as benchmarks/export.py calls it)
    on the first `--n-features` features at gpt2-small's shape: features per second."""
    from export import export_after, with_tokenizer

    from sae_lens_attn.dashboard.neuronpedia import NeuronpediaSettings

    model, sae, layout, tokens = gpt2_shape(1, smoke=args.smoke)
    settings = NeuronpediaSettings(
        model_id="gpt2-shape", sae_set="bench", batch_size=32 if args.smoke else 128
    )
    with tempfile.TemporaryDirectory() as tmp:
        with_tokenizer(model, Path(tmp) / "tokenizer")
        began = time.perf_counter()
        export_after(
            model, sae, layout, tokens, list(range(args.n_features)), settings, Path(tmp) / "np"
        )
        seconds = time.perf_counter() - began
    return {"features": args.n_features, "seconds": seconds, "load_average": os.getloadavg()[0]}


def run_child(args: argparse.Namespace, config: str, n_features: int = 0) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        config,
        "--threads",
        str(args.threads),
        "--gpt2-layers",
        str(args.gpt2_layers),
        "--n-features",
        str(n_features),
        "--demo-sae",
        str(args.demo_sae or ""),
        *(["--smoke"] if args.smoke else []),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    if args.smoke:  # a fork of this process, which has imported torch and sae_lens once
        done = run_python(command, env)
        print(done.stderr, end="", file=sys.stderr)
    else:
        # the child's stderr (a line per shard) goes straight through, so a long run shows
        # where it is and a run cut short still leaves its figures in the log
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False, env=env)
    if done.returncode:
        raise SystemExit(f"{config} child failed (its stderr is above)")
    print(
        f"{config}: {done.stdout.strip().splitlines()[-1]}", file=sys.stderr
    )  # kept if main fails
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--demo-sae", default=None, help="a saved 1024-feature demo SAE (default: train one)"
    )
    parser.add_argument("--gpt2-layers", type=int, default=2)
    parser.add_argument(
        "--no-circuit", action="store_true", help="leave the circuit panel out (child runs only)"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"(b) on all {D_SAE} features of the gpt2-small-shaped SAE, every panel (an hour+)",
    )
    parser.add_argument("--child", choices=("demo", "gpt2", "export"), help=argparse.SUPPRESS)
    parser.add_argument("--n-features", type=int, default=0, help=argparse.SUPPRESS)
    args = parse_with_smoke(parser, threads=1)  # --smoke: tiny shapes, no training
    if args.child:
        child(args)
        return
    print(
        f"atlas benchmark: {machine_summary()}, {args.threads} thread(s), load average before "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min; the machine is shared)"
    )
    n_gpt2 = 64 if args.smoke else D_SAE if args.full else 2000
    with tempfile.TemporaryDirectory() as tmp:
        if not args.demo_sae and not args.smoke:
            began = time.perf_counter()
            args.demo_sae = str(train_demo_sae(Path(tmp) / "demo"))
            print(f"trained the demo-size SAE in {time.perf_counter() - began:.0f} s")
        # the gpt2 shape first: with --full it is the long one, and its shard lines come first
        gpt2 = run_child(args, "gpt2", n_gpt2)
        runs = {"(a) demo SAE": run_child(args, "demo"), "(b) gpt2 shape": gpt2}
        export = run_child(args, "export", 8 if args.smoke else 512)
    print(f"{'':<28}" + "".join(f"{name:>22}" for name in runs))
    rows = [
        ("features", "features", "{:.0f}"),
        ("wall s (all)", "seconds", "{:.1f}"),
        ("  model/SAE load s", "load_seconds", "{:.1f}"),
        ("CPU s (all)", "cpu_seconds", "{:.1f}"),
        ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
        ("site MB", "site_mb", "{:.0f}"),
        ("load avg (1 min, at end)", "load_average", "{:.1f}"),
    ]
    for label, key, fmt in rows:
        print(f"{label:<28}" + "".join(f"{fmt.format(run[key]):>22}" for run in runs.values()))
    for name, run in runs.items():
        print(f"{name}: where the time goes (wall s, CPU s)")
        print(
            startup_table(
                run["stages"], run["clock"], [run["load_seconds"], run["load_cpu_seconds"]]
            )
        )
        print(shards_table(run["stages"], run["clock"], len(run["peaks"])))
    demo, gpt2 = runs.values()
    per_s = demo["features"] / demo["atlas_seconds"]
    print(
        "(b) peak RSS after each shard (features written: MB): "
        + ", ".join(f"{n}: {mb:.0f}" for n, mb in gpt2["peaks"])
    )
    n_mid, mb_mid = next((n, mb) for n, mb in gpt2["peaks"] if n >= min(1000, n_gpt2 // 2))
    n_end, mb_end = gpt2["peaks"][-1]
    growth = (mb_end - mb_mid) / ((n_end - n_mid) / 1000) if n_end > n_mid else 0.0
    gpt2_per_s = gpt2["features"] / gpt2["atlas_seconds"]
    site_kb = gpt2["site_mb"] * 1000 / gpt2["features"]
    export_per_s = export["features"] / export["seconds"]
    print(
        f"(a): {demo['features']} live features in {demo['atlas_seconds']:.1f} s after loading "
        f"= {per_s:.2f} features/s ({demo['features'] / demo['cpu_seconds']:.1f} per CPU second); "
        f"(b): peak RSS {mb_mid:.0f} MB at {n_mid} features, {mb_end:.0f} MB at {n_end}"
    )
    print(
        f"(b): {gpt2['features']} features in {gpt2['atlas_seconds']:.1f} s after loading = "
        f"{gpt2_per_s:.2f} features/s; site {gpt2['site_mb']:.1f} MB = {site_kb:.1f} KB a "
        f"feature; export neuronpedia: {export['features']} features in "
        f"{export['seconds']:.1f} s = {export_per_s:.2f} features/s (load "
        f"{export['load_average']:.1f})"
    )
    peak = max(demo["peak_rss_mb"], gpt2["peak_rss_mb"])
    print(
        f"atlas_features_per_s={per_s:.2f} atlas_peak_rss_mb={peak:.0f} "
        f"atlas_rss_growth_mb_per_1k={growth:.1f} atlas_gpt2_features_per_s={gpt2_per_s:.2f} "
        f"atlas_site_kb_per_feature={site_kb:.1f} export_features_per_s={export_per_s:.2f}"
    )


if __name__ == "__main__":
    main()
