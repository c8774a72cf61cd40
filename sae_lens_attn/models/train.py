"""Train the embedded model: tokenizer and 2-layer transformer on the stdlib corpus.

    python -m sae_lens_attn.models.train --out sae_lens_attn/models/embedded

Writes into `--out`: `tokenizer/`, `model.safetensors` (fp16), `config.json` (model
arguments, training settings, corpus description, final measurements) and
`training_log.csv` (loss curve with held-out loss and per-head induction scores every
`--eval-every` steps). Deterministic given `--seed` and `--threads`: data order and
initialisation come from seeded generators; CPU float reductions can still differ across
thread counts, CPUs and torch builds, so bit-exact weights need the same setup.

The defaults are the shipped model's recipe (11 min on 2 CPU threads). Induction heads
sit behind a long loss plateau: a previous-token head in layer 0 and a matching, copying
head in layer 1 only pay off together. Two things move them within a CPU budget:
half of the training rows are corpus slices of random length repeated after a short gap
(`--repeat-fraction`, `--repeat-source corpus`; the random lengths leave no fixed attention
offset to exploit), and layer-0 head 0 starts as a previous-token head
(`--plant-previous-token-head`; training is free to change it). Without the planted head,
or with uniform random tokens as the repeated segments, no induction head had formed by
step 1100-1500 in our runs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from sae_lens_attn._atomic import atomic_path, atomic_write_text
from sae_lens_attn._safe_output import write_csv
from sae_lens_attn.models.corpus import TEST_EVERY, corpus_files, iter_corpus_texts, stdlib_dir
from sae_lens_attn.models.dataset import corpus_tokens
from sae_lens_attn.models.embedded import (
    CONFIG_FILE,
    TOKENIZER_DIR,
    WEIGHTS_FILE,
    build_model_config,
    load_embedded_model,
)
from sae_lens_attn.models.induction import induction_scores, previous_token_scores
from sae_lens_attn.models.tokenizer import load_tokenizer, save_tokenizer, train_bpe_tokenizer

LOG_FILE = "training_log.csv"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--d-head", type=int, default=32)
    parser.add_argument("--n-ctx", type=int, default=128)
    parser.add_argument("--positional-embedding", default="rotary",
                        choices=["standard", "rotary", "alibi"])
    parser.add_argument("--steps", type=int, default=4500)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=100, help="linear warm-up steps")
    parser.add_argument("--final-lr-ratio", type=float, default=0.3,
                        help="cosine decay ends at lr * this")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--repeat-fraction", type=float, default=0.5,
                        help="share of training rows replaced by random token segments of "
                             "random length, each repeated (a curriculum that makes induction "
                             "heads form early)")
    parser.add_argument("--repeat-source", default="corpus", choices=["random", "corpus"],
                        help="repeated segments are random tokens or slices of the corpus")
    parser.add_argument("--repeat-pool", type=int, default=0,
                        help="random segments use the N most frequent tokens (0: all)")
    parser.add_argument("--plant-previous-token-head", type=float, default=5.0, metavar="SCALE",
                        help="if > 0, layer-0 head 0 starts as a previous-token head with "
                             "query/key biases of this size (rotary models only)")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--eval-sequences", type=int, default=64,
                        help="held-out sequences for the test loss")
    args = parser.parse_args(argv)
    # checked here, before minutes of tokenizer training and data preparation
    if not 0 <= args.repeat_fraction <= 1:
        parser.error(f"--repeat-fraction must be between 0 and 1, got {args.repeat_fraction}")
    if args.repeat_pool < 0:
        parser.error(f"--repeat-pool must be 0 (whole vocabulary) or a positive count, got {args.repeat_pool}")
    if args.plant_previous_token_head > 0 and args.positional_embedding != "rotary":
        parser.error("--plant-previous-token-head needs --positional-embedding rotary "
                     f"(got {args.positional_embedding}); pass --plant-previous-token-head 0")
    return args


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up to `lr`, then cosine decay to `lr * final_lr_ratio` at the last step."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    floor = args.lr * args.final_lr_ratio
    return floor + 0.5 * (args.lr - floor) * (1 + math.cos(math.pi * progress))


class SegmentDrawer:
    """Draws the token segments that `repeated_segment_row` repeats.

    `source="random"`: uniform over the `pool` most frequent training tokens (BOS never
    drawn; `pool=0` means the whole vocabulary). `source="corpus"`: contiguous slices of
    training rows, so repeats have natural text statistics.
    """

    def __init__(self, train_tokens: torch.Tensor, source: str, pool: int, bos: int,
                 d_vocab: int) -> None:
        if source not in ("random", "corpus"):
            raise ValueError(f"repeat source must be 'random' or 'corpus', got {source!r}")
        self.train_tokens, self.source = train_tokens, source
        counts = torch.bincount(train_tokens.flatten(), minlength=d_vocab)
        counts[bos] = -1
        order = counts.argsort(descending=True)
        self.pool = order[: pool if pool > 0 else d_vocab - 1]

    def __call__(self, n: int, generator: torch.Generator) -> list[int]:
        if self.source == "random":
            return self.pool[torch.randint(0, len(self.pool), (n,), generator=generator)].tolist()
        row = int(torch.randint(0, self.train_tokens.shape[0], (1,), generator=generator))
        start = int(torch.randint(1, self.train_tokens.shape[1] - n + 1, (1,), generator=generator))
        return self.train_tokens[row, start: start + n].tolist()


def repeated_segment_row(
    n_ctx: int, draw: SegmentDrawer, bos: int, generator: torch.Generator,
    max_segment: int = 40,
) -> torch.Tensor:
    """`[n_ctx]`: BOS, then segments of random length (4..`max_segment`), each followed by
    up to 8 other tokens and the segment again. The lengths vary so that no fixed attention
    offset predicts the repeat: only induction (content matching) does."""
    row = [bos]
    while len(row) < n_ctx:
        length = int(torch.randint(4, max_segment + 1, (1,), generator=generator))
        gap = int(torch.randint(0, 9, (1,), generator=generator))
        drawn = draw(length + gap, generator)
        row += drawn + drawn[:length]
    return torch.tensor(row[:n_ctx])


def mix_in_repeated_segments(
    batch: torch.Tensor, fraction: float, draw: SegmentDrawer, bos: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """`[batch, n_ctx]` corpus rows; a `fraction` of them (chosen with `generator`) are
    replaced by `repeated_segment_row`s: a synthetic induction curriculum."""
    if fraction <= 0:
        return batch
    chosen = torch.nonzero(torch.rand(batch.shape[0], generator=generator) < fraction).flatten()
    batch = batch.clone()
    for row in chosen.tolist():
        batch[row] = repeated_segment_row(batch.shape[1], draw, bos, generator)
    return batch


@torch.no_grad()
def plant_previous_token_head(model: HookedTransformer, head: int, scale: float) -> None:
    """Initialise layer-0 `head` as a previous-token head of a rotary model.

    The query bias `q` sits on the two fastest rotary frequencies and the key bias is `q`
    rotated by one position, so the score `(R_i q) . (R_j k)` peaks at `j = i - 1`; the
    head's W_Q/W_K start at a tenth of their initial scale, so position dominates. Training
    is free to change all of it. This shortens the long plateau before induction heads
    form (a previous-token head and a copying head must appear together) to what a CPU can
    train in minutes.
    """
    if model.cfg.positional_embedding_type != "rotary":
        raise ValueError("plant_previous_token_head needs positional_embedding='rotary'")
    attn = model.blocks[0].attn
    query = torch.zeros(model.cfg.d_head)
    query[:2] = scale
    key = attn.apply_rotary(query.expand(1, 2, 1, -1).clone())[0, 1, 0]
    attn.b_Q[head], attn.b_K[head] = query, key
    attn.W_Q[head] *= 0.1
    attn.W_K[head] *= 0.1


def model_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The HookedTransformerConfig arguments saved in config.json."""
    return {
        "n_layers": 2,
        "d_model": args.d_model,
        "n_heads": args.n_heads,
        "d_head": args.d_head,
        "d_mlp": 4 * args.d_model,
        "d_vocab": args.vocab_size,
        "n_ctx": args.n_ctx,
        "act_fn": "gelu",
        "normalization_type": "LN",
        "positional_embedding_type": args.positional_embedding,
        **({"rotary_dim": args.d_head} if args.positional_embedding == "rotary" else {}),
        "original_architecture": "sae_lens_attn.embedded",
        "model_name": "sae-lens-attn-embedded-2l",
    }


@torch.no_grad()
def held_out_loss(model: HookedTransformer, tokens: torch.Tensor, batch_size: int) -> float:
    losses = [model(chunk, return_type="loss").item() for chunk in tokens.split(batch_size)]
    return sum(losses) / len(losses)


def evaluate(model: HookedTransformer, test_tokens: torch.Tensor, batch_size: int) -> dict:
    model.eval()
    scores = induction_scores(model)
    model.train()
    row = {"test_loss": held_out_loss(model, test_tokens, batch_size)}
    row["max_induction_L1"] = scores[1].max().item()
    row["max_previous_token_L0"] = previous_token_scores(model)[0].max().item()
    for layer in range(scores.shape[0]):
        for head in range(scores.shape[1]):
            row[f"induction_L{layer}H{head}"] = scores[layer, head].item()
    return row


def train(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    start = time.time()
    bpe = train_bpe_tokenizer(iter_corpus_texts("train"), args.vocab_size)
    save_tokenizer(bpe, out / TOKENIZER_DIR, model_max_length=args.n_ctx)
    tokenizer = load_tokenizer(out / TOKENIZER_DIR)
    train_tokens = corpus_tokens(tokenizer, args.n_ctx, split="train")
    test_tokens = corpus_tokens(tokenizer, args.n_ctx, args.eval_sequences, split="test")
    print(f"tokenizer + corpus: {train_tokens.shape[0]} train rows of {args.n_ctx} tokens "
          f"({time.time() - start:.0f}s)", flush=True)

    model_args = model_arguments(args)
    torch.manual_seed(args.seed)
    model = HookedTransformer(build_model_config(model_args, seed=args.seed), move_to_device=False)
    model.set_tokenizer(tokenizer)
    if args.plant_previous_token_head > 0:
        plant_previous_token_head(model, 0, args.plant_previous_token_head)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and not n.startswith("pos")]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or n.startswith("pos")]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95),
    )
    draw = SegmentDrawer(train_tokens, args.repeat_source, args.repeat_pool,
                         tokenizer.bos_token_id, args.vocab_size)
    order = torch.Generator().manual_seed(args.seed)
    permutation = torch.randperm(train_tokens.shape[0], generator=order)
    cursor, epoch = 0, 0
    log_rows: list[dict[str, Any]] = []
    running, running_n = 0.0, 0
    train_start = time.time()
    for step in tqdm(range(args.steps), desc="training", mininterval=30):
        if cursor + args.batch_size > len(permutation):
            permutation, cursor = torch.randperm(train_tokens.shape[0], generator=order), 0
            epoch += 1
        batch = mix_in_repeated_segments(train_tokens[permutation[cursor: cursor + args.batch_size]],
                                         args.repeat_fraction, draw, tokenizer.bos_token_id, order)
        cursor += args.batch_size
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        loss = model(batch, return_type="loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running, running_n = running + loss.item(), running_n + 1
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            row = {"step": step + 1, "tokens": (step + 1) * args.batch_size * args.n_ctx,
                   "epoch": epoch, "lr": learning_rate(step, args),
                   "train_loss": running / running_n, "elapsed_s": time.time() - train_start}
            row.update(evaluate(model, test_tokens, args.batch_size))
            log_rows.append(row)
            running, running_n = 0.0, 0
            print(f"step {row['step']:5d}  train {row['train_loss']:.3f}  "
                  f"test {row['test_loss']:.3f}  max L1 induction "
                  f"{row['max_induction_L1']:.3f}  max L0 previous-token "
                  f"{row['max_previous_token_L0']:.3f}  {row['elapsed_s']:.0f}s", flush=True)

    write_csv(out / LOG_FILE, log_rows)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if not k.endswith((".mask", ".IGNORE"))}
    with atomic_path(out / WEIGHTS_FILE) as temporary:
        save_file(state, temporary)

    config = {
        "model": model_args,
        "training": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k != "out"},
        "corpus": {
            "description": "the .py files of the Python standard library (site-packages "
                           f"excluded); one file in {TEST_EVERY} held out by path hash",
            "stdlib_dir": str(stdlib_dir()),
            "python_version": platform.python_version(),
            "train_files": len(corpus_files("train")),
            "test_files": len(corpus_files("test")),
            "train_tokens": int(train_tokens.numel()),
        },
        "environment": {"torch": torch.__version__, "platform": platform.platform()},
        "training_wall_s": round(time.time() - train_start, 1),
    }
    atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    config["measurements"] = measure(out, test_tokens, args.batch_size)
    atomic_write_text(out / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return config


def measure(folder: Path, test_tokens: torch.Tensor, batch_size: int) -> dict[str, Any]:
    """Held-out loss and per-head induction scores of the shipped (fp16, processed) model."""
    model = load_embedded_model(folder)
    scores = induction_scores(model, batch=32, half_length=50, seed=1)
    return {
        "test_loss": round(held_out_loss(model, test_tokens, batch_size), 4),
        "induction_scores": [[round(s, 3) for s in layer] for layer in scores.tolist()],
        "induction_protocol": "32 sequences of BOS + 50 uniform random tokens repeated "
                              "twice, seed 1; mean attention to the token after the "
                              "previous occurrence, over the second copy",
    }


def main(argv: Sequence[str] | None = None) -> int:
    config = train(parse_args(argv))
    print(json.dumps(config["measurements"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
