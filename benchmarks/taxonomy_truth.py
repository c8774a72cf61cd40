"""Does the taxonomy classify the embedded model's known heads, and does it stay put?

Trains block-diagonal SAEs on layers 0 and 1 of the embedded model with `sae-lens-attn
train` at its default settings but 300,000 training tokens (`--layers 0,1
--training-tokens 300000`: expansion 8, batch 4096, lr 3e-4, L1 coefficient 1, context
128), runs `sae-lens-attn detect --detectors taxonomy` on each, and prints each SAE's
per-head table (classes per head; in brackets, how many are token-specific). Then it
trains the same two SAEs again on 4x the tokens (1,200,000; same seed) and compares.

Stability: the features of the two trainings are matched one to one by decoder
direction. For block-diagonal SAEs a feature lives in one head's block, so matching is
per head: the cosine similarity of every pair of decoder rows in that head's block, and
the assignment maximising the summed cosine (`scipy.optimize.linear_sum_assignment`,
Hungarian). Over matched pairs where both features are live, `taxonomy_stability` is the
share whose two classes agree (every matched pair counts, whatever its cosine; the mean
cosine is printed beside it).

The embedded model's known heads: L0H0 is a previous-token head; L1H0 and L1H2 are
induction heads. Last line:

    classified_share=<live features not other, both 300k SAEs>
    l0h0_previous_token_share=<of L0H0's live features> induction_heads_share=<of L1H0 and
    L1H2's live features in induction> taxonomy_stability=<see above>

`--smoke`: 4096 tokens (16384 for the longer run), expansion factor 1, one thread, train's
evaluation on one batch and its dead count on 4096 tokens, detect on 8 sequences of 32
tokens.

    python benchmarks/taxonomy_truth.py [--threads 2] [--out DIR] [--tokens 300000] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from _bench import machine_summary, parse_with_smoke, run_python

LAST_LINE_KEYS = (
    "classified_share",
    "l0h0_previous_token_share",
    "induction_heads_share",
    "taxonomy_stability",
)
LAYERS = (0, 1)
# train's defaults when this benchmark was measured (block-diagonal ReLU); docs/taxonomy.md
OLD_DEFAULTS = ("--lr", "3e-4", "--l1-coefficient", "1")
# `--smoke`: train's evaluation after training on one batch and the dead count on 4096
# tokens (its defaults, 4 batches and 100,000 tokens, were most of a smoke run's CPU)
SMOKE_EVALUATION = ("--eval-batches", "1", "--dead-tokens", "4096")
TAXONOMY = "taxonomy"


def cli(*arguments: str) -> None:
    """Run `sae-lens-attn ...` in a fresh process; stop with its output on failure."""
    done = run_python([sys.executable, "-m", "sae_lens_attn", *arguments])
    if done.returncode:
        raise SystemExit(
            f"sae-lens-attn {' '.join(arguments)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )


def train_and_detect(out: Path, tokens: int, args: argparse.Namespace) -> dict[int, dict]:
    """`{layer: {"sae": folder, "rows": {feature: taxonomy row}, "heads": families.json's
    heads, "specific": heads_token_specific}}`."""
    began = time.time()
    threads = args.threads
    cli(
        "train",
        "--layers",
        ",".join(map(str, LAYERS)),
        "--training-tokens",
        str(tokens),
        "--threads",
        str(threads),
        "--expansion-factor",
        str(args.expansion_factor),
        "--batch-size",
        str(args.batch_size),
        *OLD_DEFAULTS,
        *(SMOKE_EVALUATION if args.smoke else ()),
        "--out",
        str(out / "saes"),
    )
    print(
        f"trained layers {LAYERS} on {tokens:,} tokens in {time.time() - began:.0f} s "
        f"(load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    found = {}
    for layer in LAYERS:
        sae = out / "saes" / f"L{layer}_block_diagonal"
        began = time.time()
        cli(
            "detect",
            "--sae",
            str(sae),
            "--detectors",
            TAXONOMY,
            "--no-png",
            "--threads",
            str(threads),
            "--eval-sequences",
            str(args.eval_sequences),
            "--context-size",
            str(args.context_size),
            "--n-prompts",
            str(args.n_prompts),
            "--out",
            str(out / f"detect_L{layer}"),
        )
        print(f"detect on layer {layer}: {time.time() - began:.0f} s", flush=True)
        document = json.loads((out / f"detect_L{layer}" / "families.json").read_text())
        rows = {row["feature"]: row for row in document["rows"] if row["detector"] == TAXONOMY}
        found[layer] = {
            "sae": sae,
            "rows": rows,
            "heads": document["heads"],
            "specific": document.get("heads_token_specific", {}),
        }
    return found


def print_heads(title: str, result: dict) -> None:
    from sae_lens_attn.detectors.classes import CLASSES
    from sae_lens_attn.detectors.heads_table import count_cell

    heads = result["heads"]
    classes = [cls for cls in CLASSES if any(cls in by_class for by_class in heads.values())]
    print(f"\n{title}\n| head | " + " | ".join(classes) + " | live |")
    print("|---" * (len(classes) + 2) + "|")
    for head, by_class in heads.items():
        specific = result["specific"].get(head, {})
        cells = [count_cell(by_class.get(cls, 0), specific.get(cls, 0)) for cls in classes]
        print(f"| {head} | " + " | ".join(cells) + f" | {sum(by_class.values())} |")


def decoder_blocks(folder: Path) -> torch.Tensor:
    """`[n_heads, features per head, d_head]` decoder rows of a saved block-diagonal SAE."""
    from sae_lens_attn.sources.saved_sae import load_saved_sae

    return load_saved_sae(folder).W_dec_blocks.detach().float()


def match_per_head(
    short: torch.Tensor, long: torch.Tensor
) -> tuple[list[tuple[int, int]], list[float]]:
    """Hungarian matching of decoder rows, head by head: `(pairs of global feature indices,
    their cosines)`."""
    from scipy.optimize import linear_sum_assignment

    pairs, cosines = [], []
    per_head = short.shape[1]
    for head in range(short.shape[0]):
        a = torch.nn.functional.normalize(short[head], dim=1)
        b = torch.nn.functional.normalize(long[head], dim=1)
        similarity = (a @ b.T).numpy()
        rows, cols = linear_sum_assignment(similarity, maximize=True)
        pairs += [
            (head * per_head + int(r), head * per_head + int(c))
            for r, c in zip(rows, cols, strict=True)
        ]
        cosines += [float(similarity[r, c]) for r, c in zip(rows, cols, strict=True)]
    return pairs, cosines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=300_000)
    parser.add_argument(
        "--out", help="keep the SAEs and detect outputs here (default: a temporary folder)"
    )
    parser.add_argument("--expansion-factor", type=int, default=8, help="train's (default 8)")
    parser.add_argument(
        "--batch-size", type=int, default=4096, help="train's, in tokens (default 4096)"
    )
    parser.add_argument("--eval-sequences", type=int, default=64, help="detect's (default 64)")
    parser.add_argument("--context-size", type=int, default=128, help="detect's (default 128)")
    parser.add_argument(
        "--n-prompts", type=int, default=8, help="detect's induction prompts (default 8)"
    )
    args = parse_with_smoke(
        parser,
        threads=1,
        tokens=4096,
        expansion_factor=1,
        batch_size=1024,
        eval_sequences=8,
        context_size=32,
        n_prompts=2,
    )
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out or scratch)
        short = train_and_detect(out / "short", args.tokens, args)
        for layer in LAYERS:
            print_heads(f"layer {layer}, block-diagonal, {args.tokens:,} tokens", short[layer])
        long = train_and_detect(out / "long", 4 * args.tokens, args)
        for layer in LAYERS:
            print_heads(f"layer {layer}, block-diagonal, {4 * args.tokens:,} tokens", long[layer])

        live = [
            row
            for layer in LAYERS
            for row in short[layer]["rows"].values()
            if row["evidence"].get("live", True)
        ]
        classified = sum(row["family"] != "other" for row in live) / max(len(live), 1)

        def share(layer: int, heads: tuple[str, ...], cls: str) -> float:
            by_class = [short[layer]["heads"].get(head, {}) for head in heads]
            return sum(b.get(cls, 0) for b in by_class) / max(
                sum(sum(b.values()) for b in by_class), 1
            )

        same, compared, all_cosines = 0, 0, []
        for layer in LAYERS:
            pairs, cosines = match_per_head(
                decoder_blocks(short[layer]["sae"]), decoder_blocks(long[layer]["sae"])
            )
            all_cosines += cosines
            for a, b in pairs:
                row_a, row_b = short[layer]["rows"][a], long[layer]["rows"][b]
                if row_a["family"] and row_b["family"]:  # both live
                    compared += 1
                    same += row_a["family"] == row_b["family"]
            print(
                f"layer {layer}: {len(pairs)} matched pairs, mean decoder cosine {sum(cosines) / len(cosines):.3f}"
            )
    stability = same / max(compared, 1)
    print(
        f"live features {len(live)}; matched pairs compared (both live) {compared}; "
        f"mean decoder cosine {sum(all_cosines) / len(all_cosines):.3f}; load average {os.getloadavg()[0]:.1f}; "
        f"{args.threads} thread(s); {machine_summary()}"
    )
    print(
        f"classified_share={classified:.3f} "
        f"l0h0_previous_token_share={share(0, ('L0H0',), 'previous_token'):.3f} "
        f"induction_heads_share={share(1, ('L1H0', 'L1H2'), 'induction'):.3f} "
        f"taxonomy_stability={stability:.3f}"
    )


if __name__ == "__main__":
    main()
