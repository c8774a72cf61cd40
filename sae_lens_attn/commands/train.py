"""`sae-lens-attn train`: train an SAE on blocks.L.attn.hook_z with SAELens's runner."""

from __future__ import annotations

import argparse
import math

from sae_lens_attn.commands._common import (
    EMBEDDED_MODEL,
    add_model_argument,
    add_out_argument,
    load_model,
    parse_index_list,
)
from sae_lens_attn.commands._train_scaleout import (
    add_scaleout_arguments,
    rank,
    run_training,
    scaleout_options,
)

ARCHITECTURES = ("block_diagonal", "standard", "topk")
EVAL_BATCH_PROMPTS = 8


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train an SAE on an attention layer's hook_z (SAELens runner, offline by default)",
        description="Train an SAE on blocks.L.attn.hook_z (all heads or --heads, in that "
        "order) with SAELens's LanguageModelSAETrainingRunner and save it to --out. No "
        "network access unless --wandb or a hub model/dataset is asked for.",
    )
    add_model_argument(parser)
    parser.add_argument("--layer", type=int, required=True, help="attention layer L")
    parser.add_argument(
        "--heads", type=parse_index_list, default=None,
        help="heads to train on, in this order, e.g. 0,3 or 0-3 (default: all)",
    )
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="block_diagonal")
    parser.add_argument("--expansion-factor", type=int, default=8, help="d_sae = this x d_in")
    parser.add_argument("--d-sae", type=int, default=None, help="dictionary size (overrides --expansion-factor)")
    parser.add_argument("--l1-coefficient", type=float, default=None, help="L1 penalty (ReLU SAEs)")
    parser.add_argument(
        "--k", type=int, default=None,
        help="active features per token (topk) or per head (block_diagonal: switches it to TopK)",
    )
    parser.add_argument("--per-head-norm", action="store_true",
                        help="scale each head to mean norm sqrt(d_head) while training (folded into the saved SAE)")
    parser.add_argument("--training-tokens", type=int, default=1_000_000)
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4096, help="training batch size in tokens")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument(
        "--dataset", default=None,
        help="Hugging Face dataset path (needs the hub); default for the embedded model: its corpus",
    )
    parser.add_argument("--eval-batches", type=int, default=4,
                        help="batches of SAELens evals after training (all heads only; 0: none)")
    parser.add_argument("--wandb", action="store_true", help="log to Weights & Biases (off by default)")
    parser.add_argument("--wandb-project", default="sae_lens_attn")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=42)
    add_out_argument(parser, "hook_z_sae")
    add_scaleout_arguments(parser)
    return parser


def sae_options(args: argparse.Namespace) -> dict[str, object]:
    """Architecture config fields from the command line."""
    options: dict[str, object] = {}
    if args.l1_coefficient is not None:
        options["l1_coefficient"] = args.l1_coefficient
    if args.k is not None:
        options["k"] = args.k
        if args.architecture == "block_diagonal":
            options["activation"] = "topk"
    return options


def training_dataset(args: argparse.Namespace):  # -> datasets.Dataset | str
    """The `--dataset` path, or the embedded corpus's train split (rows enough for the run)."""
    if args.dataset is not None:
        return args.dataset
    if args.model != EMBEDDED_MODEL:
        raise SystemExit(f"error: --model {args.model} needs --dataset (a Hugging Face dataset path)")
    from sae_lens_attn.models import corpus_dataset

    rows = math.ceil(args.training_tokens / args.context_size)
    try:  # tokenize only the rows the run reads (the whole corpus takes minutes)
        return corpus_dataset(args.context_size, n_sequences=rows)
    except ValueError:  # the corpus has fewer rows: all of them
        return corpus_dataset(args.context_size)


def eval_dataset(args: argparse.Namespace):  # -> datasets.Dataset | str
    """The `--dataset` path, or held-out rows of the embedded corpus's test split."""
    if args.dataset is not None:
        return args.dataset
    from sae_lens_attn.models import corpus_dataset

    test = corpus_dataset(args.context_size, split="test")
    return test.select(range(min(EVAL_BATCH_PROMPTS * args.eval_batches, len(test))))


def run(args: argparse.Namespace) -> int:
    from sae_lens_attn.sources.evaluation import evaluate_hook_z_sae
    from sae_lens_attn.sources.training import train_hook_z_sae

    options = scaleout_options(args)
    model = load_model(args.model)
    dataset = training_dataset(args)
    sae, layout = run_training(lambda: train_hook_z_sae(
            model,
            args.layer,
            args.heads,
            args.architecture,
            dataset=dataset,
            training_tokens=args.training_tokens,
            context_size=args.context_size,
            expansion_factor=args.expansion_factor,
            d_sae=args.d_sae,
            lr=args.lr,
            train_batch_size_tokens=args.batch_size,
            per_head_norm=args.per_head_norm,
            sae_kwargs=sae_options(args),
            output_path=args.out,
            log_to_wandb=args.wandb,
            wandb_project=args.wandb_project,
            device=args.device,
            seed=args.seed,
            **options,
        ))
    if rank() != 0:
        return 0
    print(
        f"saved {args.architecture} SAE on {layout.hook_name} heads {list(layout.heads)} "
        f"(d_in {sae.cfg.d_in}, d_sae {sae.cfg.d_sae}) to {args.out}"
    )
    print(f"training L0 {sae.cfg.metadata.l0:.2f}, dead features {sae.cfg.metadata.num_dead_features}")
    if args.eval_batches > 0 and layout.uses_all_heads:
        metrics = evaluate_hook_z_sae(
            sae, model, eval_dataset(args), n_batches=args.eval_batches, batch_size_prompts=EVAL_BATCH_PROMPTS
        )
        print(f"SAELens evals on {args.eval_batches} x {EVAL_BATCH_PROMPTS} held-out prompts:")
        for name in ("l0", "explained_variance", "mse", "ce_loss_score", "ce_loss_with_sae",
                     "ce_loss_without_sae", "ce_loss_with_ablation"):
            print(f"  {name:<22}  {metrics[name]:.4f}")
    return 0
