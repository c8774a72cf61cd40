"""`sae-lens-attn train`: train hook_z SAEs with SAELens's runners, one or many per model pass.

With no sparsity option the SAE is per-head TopK (`block_diagonal`, k = d_head // 4 per
head, `training.configs.default_k_per_head`): sparse and faithful on any model.
`--layers`, `--architecture`, the sparsity knobs (`--k`, `--l1-coefficient`, ... see
`_train_knobs.py`), `--b-dec-init` and `--decoder-init` take comma lists; their cross
product is trained from one forward pass per batch (`train_hook_z_saes`). One SAE is saved
directly in `--out`, as it always was; several go to `--out/NAME`. Either way
`--out/saes.json` lists them, so `--sae OUT --sae-name NAME` finds any of them.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from sae_lens_attn.architectures.init_options import B_DEC_INITS, DECODER_INITS, SAEInit
from sae_lens_attn.commands._common import (
    EMBEDDED_MODEL,
    add_model_argument,
    add_runtime_arguments,
    check_output_folder,
    load_model,
    writable_folder,
)
from sae_lens_attn.commands._train_knobs import (
    add_knob_arguments,
    check_k_fits,
    check_knobs,
    check_sweep_size,
    sparsity_variants,
)
from sae_lens_attn.commands._values import (
    comma_list,
    int_at_least,
    non_negative_int,
    parse_index_list,
    positive_float,
    positive_int,
)
from sae_lens_attn.dead import DEAD_TOKENS, DEAD_WINDOW_TOKENS, DeadFeatures
from sae_lens_attn.errors import InvalidInputError

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

    from sae_lens_attn.sources.head_layout import HeadLayout
    from sae_lens_attn.training.multi_training import HookZSAESpec
from sae_lens_attn.commands._train_scaleout import (
    add_scaleout_arguments,
    rank,
    run_training,
    scaleout_options,
    under_torchrun,
)

# SAELens 6.54's training registry and ours, for --help; the names accepted are read from
# the registry when `train` runs, so a plugin's architecture is accepted too.
KNOWN_ARCHITECTURES = ("abstopk", "batchtopk", "block_diagonal", "block_diagonal_batchtopk",
                       "block_diagonal_jumprelu", "gated", "jumprelu", "matching_pursuit",
                       "matryoshka_batchtopk", "standard", "topk")
EVAL_BATCH_PROMPTS = 8
FRONTIER_FOLDER = "frontier"  # where a sweep of several SAEs on one hook draws its frontier
# The corpus packs each row as BOS + tokens, and the CE-loss evals need a next token: a
# row needs at least 2 tokens.
MIN_CONTEXT_SIZE = 2
DEFAULT_LR = 1e-2  # the best of 3e-3, 1e-2, 3e-2 for per-head and dense TopK in a one-off run (docs/frontier.md)
MAX_LR = 1e6  # beyond this Adam's step overflows float32 before training can diverge cleanly
PRINTED_METRICS = ("l0", "explained_variance", "mse", "ce_loss_score", "ce_loss_with_sae",
                   "ce_loss_without_sae", "ce_loss_with_ablation")


def choice_of(choices: Sequence[str], what: str):  # -> Callable[[str], str]
    """argparse type: one of `choices`, named `what` in the error."""

    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}: expected one of {', '.join(choices)}")
        return text

    return parse


def variance_share(text: str) -> float:
    """argparse type: a share in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share: expected a number in (0, 1]")
    return value


def learning_rate(text: str) -> float:
    """argparse type: a number in (0, MAX_LR]."""
    value = positive_float(text)
    if value > MAX_LR:
        raise argparse.ArgumentTypeError(f"{text!r} is too large: expected a learning rate in (0, {MAX_LR:g}]")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train SAEs on attention layers' hook_z (SAELens runners, offline by default)",
        description="Train SAEs on blocks.L.attn.hook_z (all heads or --heads, in that "
        "order) with SAELens's runners. Every architecture in SAELens's training registry is "
        "accepted by name; each sparsity option sets the field of the same name in the "
        "architectures that have it. Comma lists in --layers, --architecture and the sparsity "
        "options train their cross product from one model forward pass per batch. No network "
        "access unless --wandb or a hub model/dataset is asked for.",
    )
    add_model_argument(parser)
    layers = parser.add_mutually_exclusive_group(required=True)
    layers.add_argument("--layer", type=non_negative_int,
                        help="attention layer L (default: none; give --layer or --layers)")
    layers.add_argument("--layers", type=comma_list(non_negative_int),
                        help="attention layers, e.g. 0,1: one SAE (per architecture and sweep value) each "
                        "(default: none; give --layer or --layers)")
    parser.add_argument(
        "--heads", type=parse_index_list, default=None,
        help="heads to train on, in this order, e.g. 0,3 or 0-3 (default: all); the same for every layer",
    )
    parser.add_argument(
        "--architecture", type=comma_list(str), default="block_diagonal",
        help="one or more names from SAELens's training registry, comma-separated: "
        f"{', '.join(KNOWN_ARCHITECTURES)}, or a plugin's (default: block_diagonal, per-head TopK "
        "with k = d_head // 4 unless --l1-coefficient makes it ReLU)",
    )
    parser.add_argument("--expansion-factor", type=positive_int, default=8, help="d_sae = this x d_in (default: 8)")
    parser.add_argument("--d-sae", type=positive_int, default=None, help="dictionary size (default: --expansion-factor x d_in)")
    add_knob_arguments(parser)
    parser.add_argument(
        "--b-dec-init", type=comma_list(choice_of(B_DEC_INITS, "b_dec init")), default=None,
        help="initial b_dec: zeros (SAELens's), or the mean or geometric_median of the first "
        "training batches, per head for per-head SAEs; a comma list sweeps it (default: zeros)",
    )
    parser.add_argument(
        "--decoder-init", type=comma_list(choice_of(DECODER_INITS, "decoder init")), default=None,
        help="initial decoder directions: kaiming (SAELens's), active_subspace (drawn inside "
        "each head's principal subspace holding --init-variance of the first batches' "
        "variance), data_samples (each row the direction of one sampled token's input minus "
        "b_dec, per head) or kmeans (the rows the spherical k-means centroids of those "
        "directions, per head); encoder = decoder transpose either way; a comma list sweeps it "
        "(default: kaiming)",
    )
    parser.add_argument("--init-variance", type=variance_share, default=0.999,
                        help="share of variance the active subspace holds (default: 0.999)")
    parser.add_argument("--init-batches", type=positive_int, default=8,
                        help="model batches drawn for --b-dec-init/--decoder-init (default: 8)")
    parser.add_argument("--per-head-norm", action="store_true",
                        help="scale each head to mean norm sqrt(d_head) while training (folded into the saved SAE)")
    parser.add_argument("--training-tokens", type=positive_int, default=1_000_000,
                        help="tokens each SAE trains on (default: 1000000)")
    parser.add_argument("--context-size", type=int_at_least(MIN_CONTEXT_SIZE), default=128,
                        help=f"tokens per row, {MIN_CONTEXT_SIZE} to the model's n_ctx (default: 128)")
    parser.add_argument("--batch-size", type=positive_int, default=4096, help="training batch size in tokens (default: 4096)")
    parser.add_argument("--lr", type=learning_rate, default=DEFAULT_LR,
                        help=f"Adam learning rate, shared by all SAEs (default: {DEFAULT_LR:g})")
    parser.add_argument(
        "--dataset", default=None,
        help="Hugging Face dataset path (needs the hub); default for the embedded model: its corpus",
    )
    parser.add_argument("--eval-batches", type=non_negative_int, default=4,
                        help=f"batches of {EVAL_BATCH_PROMPTS} held-out prompts for SAELens's evals after "
                        "training (SAEs on all heads only; 0: none; default: 4)")
    parser.add_argument("--dead-tokens", type=non_negative_int, default=DEAD_TOKENS,
                        help="held-out tokens each feature is checked on after training: one that never fires "
                        f"is dead (below {DEAD_TOKENS:,} tokens only 'not seen'); 0: skip (default: {DEAD_TOKENS})")
    parser.add_argument("--dead-window-tokens", type=positive_int, default=DEAD_WINDOW_TOKENS,
                        help="training tokens a feature must stay silent before the TopK auxiliary loss "
                        "(AuxK, per head for per-head SAEs) tries to revive it: SAELens's "
                        f"dead_feature_window, rounded up to whole batches (default: {DEAD_WINDOW_TOKENS})")
    parser.add_argument("--silent-bias-lift", action=argparse.BooleanOptionalAction, default=None,
                        help="per-head TopK SAEs: after every step, raise b_enc of each feature that did not "
                        "fire on the batch to the edge of firing, so that no feature stays silent "
                        "(docs/initialisation.md; default: on, off under torchrun; other architectures "
                        "train without it)")
    parser.add_argument("--resample-dead-tokens", type=non_negative_int, default=None,
                        help="every this many training tokens (until 80%% of the run), move the features "
                        "silent for --dead-window-tokens onto the worst-reconstructed tokens of their head "
                        "(dead-feature resampling); 0: never (default: "
                        f"{DEAD_WINDOW_TOKENS}, off under torchrun)")
    parser.add_argument("--wandb", action="store_true", help="log to Weights & Biases (off by default)")
    parser.add_argument("--wandb-project", default="sae_lens_attn", help="W&B project with --wandb (default: sae_lens_attn)")
    parser.add_argument("--device", default="cpu", help="torch device for the model and the SAEs (default: cpu)")
    parser.add_argument(
        "--autocast", action="store_true",
        help="train the SAEs under bf16 autocast (SAELens's runner option autocast; default: off, "
        "float32); a CPU without native bf16 (AVX512-BF16 or AMX) gets a warning that it is slow",
    )
    parser.add_argument("--seed", type=non_negative_int, default=42,
                        help="seeds each SAE's initialisation and the order of training batches (default: 42)")
    parser.add_argument(
        "--out", type=writable_folder, default=Path("hook_z_sae"),
        help="output folder: the SAE itself when one is trained, else one folder per SAE; "
        "saes.json lists them (default: hook_z_sae)",
    )
    add_runtime_arguments(parser)
    add_scaleout_arguments(parser)
    return parser


def usage_error(message: str) -> NoReturn:
    """A usage error: the CLI prints one `error:` line and exits with status 2."""
    raise InvalidInputError(message)


def layers_of(args: argparse.Namespace) -> list[int]:
    return [args.layer] if args.layer is not None else args.layers


def check_arguments(args: argparse.Namespace) -> None:
    """Checks across options, before any model or data is loaded."""
    for option in ("layers", "b_dec_init", "decoder_init"):
        values = getattr(args, option) or []
        if len(set(values)) != len(values):
            usage_error(f"--{option.replace('_', '-')} lists a value twice: {values}")
    check_knobs(args)
    if args.dataset is None and args.model != EMBEDDED_MODEL:
        usage_error(f"--model {args.model} needs --dataset (a Hugging Face dataset path)")


def check_autocast(args: argparse.Namespace) -> None:
    """`--autocast` needs bf16 on `--device`: exit 2 where it has none; a warning where a
    CPU has no native bf16 instructions (torch emulates them: slower than float32)."""
    import warnings

    import torch

    if not args.autocast:
        return
    if args.device.startswith("cuda"):
        if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            usage_error(f"--autocast: {args.device} does not support bf16; train without --autocast (float32)")
        return
    if args.device == "cpu" and not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        warnings.warn(
            f"--autocast: this CPU has no native bf16 instructions (no AVX512-BF16, no AMX; torch's kernels: "
            f"{torch.backends.cpu.get_cpu_capability()}), so bf16 is emulated and training will be slow, "
            "likely slower than float32", stacklevel=1,
        )


def init_variants(args: argparse.Namespace) -> list[tuple[str, SAEInit | None]]:
    """`(name suffix, SAEInit or None)` per combination of `--b-dec-init` and
    `--decoder-init`; the suffix names only the options that list several values."""
    b_decs, decoders = args.b_dec_init or ["zeros"], args.decoder_init or ["kaiming"]
    variants: list[tuple[str, SAEInit | None]] = []
    for b_dec in b_decs:
        for decoder in decoders:
            init = SAEInit(b_dec, decoder, args.init_variance, args.init_batches)
            parts = ([f"bdec={b_dec}"] if len(b_decs) > 1 else []) + ([f"dec={decoder}"] if len(decoders) > 1 else [])
            variants.append(("_".join(parts), init if init.needs_data else None))
    return variants


def sae_specs(args: argparse.Namespace) -> list[HookZSAESpec]:
    """The cross product layers x architectures x sweep values x initialisations, named
    `L{layer}_{architecture}[_k=..|_l1=..][_bdec=..][_dec=..]`."""
    from sae_lens_attn.training.multi_training import HookZSAESpec

    specs = []
    for layer in layers_of(args):
        for architecture in args.architecture:
            for suffix, sae_kwargs in sparsity_variants(architecture, args):
                for init_suffix, init in init_variants(args):
                    name = "_".join(part for part in (f"L{layer}_{architecture}", suffix, init_suffix) if part)
                    specs.append(HookZSAESpec(
                        layer, None if args.heads is None else tuple(args.heads), architecture,
                        sae_kwargs, args.expansion_factor, args.d_sae, args.per_head_norm, name, init,
                    ))
    return specs


def check_against_model(args: argparse.Namespace, model: HookedTransformer, specs: Sequence[HookZSAESpec]) -> None:
    """Layers, heads, context size and every SAE config checked against the model, before
    any corpus is tokenized."""
    from sae_lens_attn.sources.head_layout import HeadLayout
    from sae_lens_attn.training.configs import sae_config_for

    if args.context_size > model.cfg.n_ctx:
        usage_error(f"--context-size {args.context_size} exceeds the model's n_ctx: expected "
                    f"{MIN_CONTEXT_SIZE}..{model.cfg.n_ctx}")
    for spec in specs:
        try:
            layout = HeadLayout.for_model(model, spec.layer, spec.heads)
        except ValueError as error:
            usage_error(str(error))
        try:
            cfg = sae_config_for(layout, spec.architecture, spec.expansion_factor, spec.d_sae, **spec.sae_kwargs)
        except ValueError as error:
            usage_error(f"{spec.sae_name}: {error}")
        check_k_fits(spec.sae_name, cfg)
        if spec.per_head_norm:
            check_scale_folds(spec.sae_name, cfg)


def check_scale_folds(sae_name: str, cfg: Any) -> None:
    """`--per-head-norm` folds each head's scale into the saved SAE. SAELens's
    matching_pursuit refuses any fold (its encoder is tied to its decoder): try it on an
    empty meta-device SAE, before any training."""
    import dataclasses

    import torch
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    from sae_lens_attn.training.folding import fold_input_scale

    training_class = SAE_TRAINING_CLASS_REGISTRY[cfg.architecture()][0]
    if hasattr(training_class, "fold_input_scaling"):  # the block-diagonal family folds any scale
        return
    sae = training_class(dataclasses.replace(cfg, device="meta"))
    try:
        fold_input_scale(sae, torch.ones(cfg.d_in, device="meta"))
    except NotImplementedError as error:
        usage_error(f"--per-head-norm cannot be folded into {sae_name}: {error}; train it without --per-head-norm")


def training_dataset(args: argparse.Namespace):  # -> datasets.Dataset | str
    """The `--dataset` path, or the embedded corpus's first rows (enough for the run, or
    the whole train split if it is smaller)."""
    if args.dataset is not None:
        return args.dataset
    return _corpus_rows(args.context_size, math.ceil(args.training_tokens / args.context_size), "train")


def eval_dataset(args: argparse.Namespace):  # -> datasets.Dataset | str
    """The `--dataset` path, or held-out rows of the embedded corpus's test split: enough
    for the evals and for `--dead-tokens`."""
    if args.dataset is not None:
        return args.dataset
    rows = max(EVAL_BATCH_PROMPTS * args.eval_batches, math.ceil(args.dead_tokens / args.context_size))
    return _corpus_rows(args.context_size, rows, "test")


def _token_rows(held_out: Any, n_rows: int | None = None):  # -> torch.Tensor
    """The first `n_rows` (default: all) token rows of a held-out dataset."""
    import torch

    column = "input_ids" if "input_ids" in held_out.column_names else "tokens"
    return torch.tensor(held_out[column][:n_rows])


def count_dead(args: argparse.Namespace, model: HookedTransformer, name: str, sae: SAE, layout: HeadLayout,
               held_out: Any) -> DeadFeatures | None:
    """Features that never fire on `--dead-tokens` held-out tokens (`sae_lens_attn.dead`),
    printed with N; None when skipped."""
    from sae_lens_attn.attribution.firing import count_firings

    if args.dead_tokens == 0 or held_out is None:
        return None
    if isinstance(held_out, str):
        print(f"dead-feature count skipped for {name}: it needs the held-out rows as tokens (--dataset {held_out})")
        return None
    tokens = _token_rows(held_out, math.ceil(args.dead_tokens / args.context_size))
    dead = count_firings(model, sae, layout, tokens, batch_size=4 * EVAL_BATCH_PROMPTS)
    print(dead.describe())
    return dead


def _corpus_rows(context_size: int, n_rows: int, split: str):  # -> datasets.Dataset
    """The first `n_rows` rows of a corpus split, or all of it if it has fewer: tokenizes
    only as far as needed."""
    from sae_lens_attn.models import corpus_dataset

    try:
        return corpus_dataset(context_size, n_rows, split=split)
    except ValueError:  # the split has fewer rows: take them all (SAELens loops over epochs)
        return corpus_dataset(context_size, split=split)


def train_saes(
    args: argparse.Namespace, model: HookedTransformer, specs: Sequence[HookZSAESpec], dataset: Any,
    scaleout: dict[str, Any],
) -> dict[str, tuple[SAE, HeadLayout, Path]]:
    """Train `specs` into `args.out`: `{name: (sae, layout, folder)}`. One SAE goes
    directly into `args.out` (`train_hook_z_sae`, with the torchrun/checkpoint options
    `scaleout`), several into `args.out/name` from one model pass per batch
    (`train_hook_z_saes`)."""
    from sae_lens_attn.training.multi_training import train_hook_z_saes
    from sae_lens_attn.training.train import dead_feature_window, train_hook_z_sae

    run = dict(
        dataset=dataset, training_tokens=args.training_tokens, context_size=args.context_size,
        lr=args.lr, train_batch_size_tokens=args.batch_size, log_to_wandb=args.wandb,
        wandb_project=args.wandb_project, device=args.device, seed=args.seed,
        runner_kwargs={
            "autocast": args.autocast,
            "dead_feature_window": dead_feature_window(args.dead_window_tokens, args.batch_size),
        },
        resample_every_tokens=resample_every_tokens(args),
        silent_bias_lift=silent_bias_lift(args),
    )
    if len(specs) == 1:
        [spec] = specs
        sae, layout = train_hook_z_sae(
            model, spec.layer, spec.heads, spec.architecture, expansion_factor=spec.expansion_factor,
            d_sae=spec.d_sae, per_head_norm=spec.per_head_norm, sae_kwargs=dict(spec.sae_kwargs),
            output_path=args.out, init=spec.init, **run, **scaleout,
        )
        return {spec.sae_name: (sae, layout, args.out)}
    trained = train_hook_z_saes(model, specs, output_path=args.out, **run)
    return {name: (sae, layout, args.out / name) for name, (sae, layout) in trained.items()}


def resample_every_tokens(args: argparse.Namespace) -> int | None:
    """The dead-feature resampling interval in tokens, None for none: `--resample-dead-tokens`,
    by default the dead window's length on one process and off under torchrun (each rank
    would resample on its own batch)."""
    if args.resample_dead_tokens is None:
        return None if under_torchrun() else DEAD_WINDOW_TOKENS
    return args.resample_dead_tokens or None


def silent_bias_lift(args: argparse.Namespace) -> bool:
    """Whether to lift silent features: `--[no-]silent-bias-lift`, by default on one process
    and off under torchrun (each rank would lift by its own batch)."""
    if args.silent_bias_lift is None:
        return not under_torchrun()
    return args.silent_bias_lift


def describe_resampling(record: dict[str, Any]) -> str:
    """One line on what dead-feature resampling did in training (`record`: the SAE's
    `metadata.resampling`)."""
    if "skipped" in record:
        return f"dead-feature resampling skipped: {record['skipped']}"
    done = record["resampled"]
    moved = [count for _, count in done if count]
    head = f"dead-feature resampling every {record['every_steps']} steps to step {record['last_step']}: "
    if not moved:
        return head + f"nothing to move in {len(done)} resamplings"
    step, most = max(done, key=lambda pair: pair[1])
    return head + (f"moved {sum(moved)} features in {len(moved)} of {len(done)} resamplings "
                   f"(most at once: {most} at step {step})")


def describe_lift(record: dict[str, Any]) -> str:
    """One line on what the silent-feature bias lift did in training (`record`: the SAE's
    `metadata.silent_bias_lift`)."""
    if "skipped" in record:
        return f"silent-feature bias lift skipped: {record['skipped']}"
    return (f"silent-feature bias lift to the edge of firing: {record['lifted']:,} lifts "
            "(a feature silent on a step's batch counts once)")


def evaluate(
    args: argparse.Namespace, model: HookedTransformer, name: str, sae: SAE, layout: HeadLayout, held_out: Any,
    folder: Path, dead: DeadFeatures | None = None,
) -> dict[str, float]:
    """SAELens's evals and the per-head evals on the `held_out` prompts (printed), or a
    message saying why none ran. Per-head dead shares come from `dead` when given."""
    from sae_lens_attn.training.evaluation import evaluate_hook_z_sae, subset_message

    if args.eval_batches == 0:
        return {}
    metrics: dict[str, float] = {}
    n_rows = args.eval_batches * EVAL_BATCH_PROMPTS
    if layout.uses_all_heads:
        eval_rows = held_out if isinstance(held_out, str) else held_out.select(range(min(n_rows, len(held_out))))
        metrics = evaluate_hook_z_sae(  # the rows per-head evals take: the first n_rows
            sae, model, eval_rows, n_batches=args.eval_batches, batch_size_prompts=EVAL_BATCH_PROMPTS
        )
        print(f"SAELens evals on {args.eval_batches} x {EVAL_BATCH_PROMPTS} held-out prompts: {name}")
        for metric in PRINTED_METRICS:
            print(f"  {metric:<22}  {metrics[metric]:.4f}")
    else:
        print(f"evals skipped for {name}: {subset_message(layout)}; per-head evals below")
    return {**metrics, **evaluate_per_head(args, model, name, sae, layout, held_out, folder, dead)}


def evaluate_per_head(
    args: argparse.Namespace, model: HookedTransformer, name: str, sae: SAE, layout: HeadLayout, held_out: Any,
    folder: Path, dead: DeadFeatures | None = None,
) -> dict[str, float]:
    """Per-head evals (`attribution.head_evals`) on the held-out rows: printed, written to
    the SAE's `head_evals.json`, returned flat (`L1H0/explained_variance`, ...)."""
    import json

    from sae_lens_attn._atomic import atomic_write_text
    from sae_lens_attn.attribution.head_evals import (
        HEAD_EVALS_FILENAME,
        evaluate_heads,
        head_evals_rows,
    )
    from sae_lens_attn.commands.plugins import format_table

    if isinstance(held_out, str):
        print(f"per-head evals skipped for {name}: they need the held-out rows as tokens (--dataset {held_out})")
        return {}
    tokens = _token_rows(held_out, args.eval_batches * EVAL_BATCH_PROMPTS)
    evals = evaluate_heads(model, sae, layout, tokens, batch_size=EVAL_BATCH_PROMPTS, dead=dead)
    print(f"per-head evals on the same prompts (only that head spliced): {name}")
    print(format_table(*head_evals_rows(evals.to_dict())))
    atomic_write_text(folder / HEAD_EVALS_FILENAME, json.dumps(evals.to_dict(), indent=1, allow_nan=False) + "\n")
    return evals.metrics()


def run(args: argparse.Namespace) -> int:
    from sae_lens_attn.training.outputs import sae_list_entry, training_metrics, write_sae_list

    check_arguments(args)
    check_autocast(args)
    check_output_folder(args.out)
    specs = sae_specs(args)
    check_sweep_size(len(specs), [spec.sae_name for spec in specs], args.yes)
    scaleout = scaleout_options(args)
    if len(specs) > 1 and (args.parallel or args.resume or args.checkpoint_every or under_torchrun()):
        usage_error(f"--parallel, --resume, --checkpoint-every and torchrun train one SAE per run; "
                    f"these options ask for {len(specs)} ({', '.join(spec.sae_name for spec in specs)})")
    if (args.resample_dead_tokens or args.silent_bias_lift) and under_torchrun():
        usage_error("--resample-dead-tokens and --silent-bias-lift run on one process (each rank would move "
                    "its features by its own batch): leave them out under torchrun")
    model = load_model(args.model)
    check_against_model(args, model, specs)
    trained = run_training(lambda: train_saes(args, model, specs, training_dataset(args), scaleout))
    if rank() != 0:
        return 0  # rank 0 saved the SAE; it alone evaluates and lists it
    held_out = eval_dataset(args) if args.eval_batches > 0 or args.dead_tokens > 0 else None
    entries = []
    trained_as = {spec.sae_name: spec.architecture for spec in specs}
    for name, (sae, layout, folder) in trained.items():
        architecture = trained_as[name]
        saved_as = "" if sae.cfg.architecture() == architecture else f" (saved as {sae.cfg.architecture()})"
        print(
            f"saved {architecture} SAE{saved_as} on {layout.hook_name} heads {list(layout.heads)} "
            f"(d_in {sae.cfg.d_in}, d_sae {sae.cfg.d_sae}) to {folder}"
        )
        print(f"training L0 {sae.cfg.metadata.l0:.2f}")
        if (resampled := getattr(sae.cfg.metadata, "resampling", None)) is not None:
            print(describe_resampling(resampled))
        lifted = getattr(sae.cfg.metadata, "silent_bias_lift", None)
        if lifted is not None and ("skipped" not in lifted or args.silent_bias_lift):  # a default skip is no news
            print(describe_lift(lifted))
        dead = count_dead(args, model, name, sae, layout, held_out)
        metrics = {**training_metrics(sae), **(dead.metrics() if dead else {}),
                   **evaluate(args, model, name, sae, layout, held_out, folder, dead)}
        path = folder.relative_to(args.out).as_posix()
        entries.append(sae_list_entry(name, layout.layer, layout.heads, architecture, path, metrics))
    listing = write_sae_list(args.out, entries)
    print(f"listed {len(entries)} SAE{'s' if len(entries) > 1 else ''} in {listing}")
    if len(entries) > 1 and args.eval_batches > 0 and len({(e["layer"], tuple(e["heads"])) for e in entries}) == 1:
        from sae_lens_attn.commands.frontier import print_frontier
        from sae_lens_attn.training.frontier import read_frontier_points

        print_frontier(read_frontier_points([listing]), args.out / FRONTIER_FOLDER)
    return 0
