"""Neuronpedia export speed at gpt2-small's shape: one model pass against sae_dashboard's runner.

A gpt2-small-shaped random model and a random dense SAE of 24576 features on
`blocks.0.attn.hook_z`, as benchmarks/atlas.py builds them (12 heads x 64, d_model 768,
vocabulary 50257; 128 random prompts of 64 tokens), with a small local BPE tokenizer for
the token strings (ids it lacks show as `#id`). The export of the first `--n-features`
features (default 512, batches of 128) is timed twice in one process, side by side:

- before: every batch made as `export neuronpedia` made it up to this change:
  sae_dashboard's `SaeVisRunner` on the batch (which runs the model over every prompt
  again for each 64 features, then sae_vis.tidy_ticks), a new dashboard copy of the SAE per
  batch, and the DFA running the model again on the examples' prompts;
- after: `export_neuronpedia` as it is (one model pass for the whole export, the
  one-pass builder, DFA from the attention that pass kept).

Both write the same batch files (tests/test_one_pass.py and tests/test_neuronpedia_export.py
check the data); the check here is that both list the same features and examples.

    python benchmarks/export.py [--threads 2] [--n-features 512] [--smoke]

`--smoke`: 8 features of benchmarks/atlas.py's tiny shape, in batches of 4.

Last line: `export_features_per_s=<after> export_before_features_per_s=<before> export_speedup=<x>`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

LAST_LINE_KEYS = ("export_features_per_s", "export_before_features_per_s", "export_speedup")

sys.path.insert(0, str(Path(__file__).parent))

LAST_LINE_KEYS = ("export_features_per_s", "export_before_features_per_s", "export_speedup")


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg()) + " (1/5/15 min)"


def with_tokenizer(model, folder: Path):
    """`model` with a 300-token local BPE tokenizer (nothing downloaded)."""
    from sae_lens_attn.models.tokenizer import load_tokenizer, save_tokenizer, train_bpe_tokenizer

    text = ["def add(a, b):\n    return a + b\n", "import os\nclass Path(object): pass\n"]
    save_tokenizer(train_bpe_tokenizer(text, vocab_size=300), folder, model_max_length=1024)
    model.tokenizer = load_tokenizer(folder)
    return model


def runner_run_sae_vis(
    model, sae, layout, tokens, features, config, vis_layout=None, ignore_tokens=None, **_
):
    """`sae_vis.run_sae_vis` as it was before the one-pass builder: sae_dashboard's
    `SaeVisRunner` on a new dashboard copy, then `tidy_ticks`."""
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    from sae_lens_attn.dashboard.sae_vis import dashboard_copy, sae_vis_config, tidy_ticks

    vis_config = sae_vis_config(layout, features, config, vis_layout, ignore_tokens)
    data = SaeVisRunner(vis_config).run(
        encoder=dashboard_copy(sae, layout), model=model, tokens=tokens
    )
    tidy_ticks(data)
    return data


def export_before(model, sae, layout, tokens, features, settings, out: Path) -> list[dict]:
    """Every batch through sae_dashboard's runner, as the export made it before."""
    from sae_lens_attn.dashboard import sae_vis
    from sae_lens_attn.dashboard.neuronpedia import batch_document, vocab_dict

    out.mkdir(parents=True)
    vocab = vocab_dict(model)
    one_pass = sae_vis.run_sae_vis
    sae_vis.run_sae_vis = runner_run_sae_vis
    documents = []
    try:
        for number, start in enumerate(range(0, len(features), settings.batch_size)):
            batch = features[start : start + settings.batch_size]
            documents.append(
                batch_document(model, sae, layout, tokens, batch, settings, None, vocab)
            )
            (out / f"batch-{number}.json").write_text(json.dumps(documents[-1], allow_nan=False))
    finally:
        sae_vis.run_sae_vis = one_pass
    return documents


def export_after(model, sae, layout, tokens, features, settings, out: Path) -> list[dict]:
    from sae_lens_attn.dashboard.neuronpedia import export_neuronpedia

    export = export_neuronpedia(model, sae, tokens, out, settings, features=features, layout=layout)
    return [json.loads(path.read_text()) for path in export.batches]


def examples(documents: list[dict]) -> list[tuple]:
    return [
        (f["feature_index"], a["qualifying_token_index"], len(a["tokens"]))
        for document in documents
        for f in document["features"]
        for a in f["activations"]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-features", type=int, default=512)
    parser.add_argument(
        "--smoke", action="store_true", help="8 features of atlas.py's tiny smoke shape"
    )
    args = parser.parse_args()
    from sae_lens_attn.runtime import configure_runtime, configure_torch

    configure_torch(configure_runtime(args.threads))  # before torch starts, as the CLI does
    from atlas import gpt2_shape

    from sae_lens_attn.dashboard.neuronpedia import NeuronpediaSettings

    n_features, batch_size = (8, 4) if args.smoke else (args.n_features, 128)
    print(
        f"export benchmark: CPU, {args.threads} thread(s), load average before {load_average()} "
        "(the machine is shared)"
    )
    model, sae, layout, tokens = gpt2_shape(1, smoke=args.smoke)
    settings = NeuronpediaSettings(model_id="gpt2-shape", sae_set="bench", batch_size=batch_size)
    features = list(range(n_features))
    seconds, documents, loads = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        with_tokenizer(model, Path(tmp) / "tokenizer")
        for name, export in (("before", export_before), ("after", export_after)):
            began = time.perf_counter()
            documents[name] = export(
                model, sae, layout, tokens, features, settings, Path(tmp) / name
            )
            seconds[name] = time.perf_counter() - began
            loads[name] = load_average()
    if examples(documents["before"]) != examples(documents["after"]):
        raise SystemExit("before and after exported different examples")
    rate = {name: n_features / s for name, s in seconds.items()}
    print(
        f"{n_features} features of a d_sae-{sae.cfg.d_sae} SAE, {tokens.shape[0]} prompts of "
        f"{tokens.shape[1]} tokens, batches of {batch_size}"
    )
    print(f"{'':<34}{'wall s':>10}{'features/s':>12}   load average after")
    for name, label in (
        ("before", "before (SaeVisRunner per batch)"),
        ("after", "after (one pass)"),
    ):
        print(f"{label:<34}{seconds[name]:>10.1f}{rate[name]:>12.2f}   {loads[name]}")
    print(
        f"export_features_per_s={rate['after']:.2f} "
        f"export_before_features_per_s={rate['before']:.2f} "
        f"export_speedup={rate['after'] / rate['before']:.2f}"
    )


if __name__ == "__main__":
    main()
