"""`sae-lens-attn detect`: run feature-family detectors on a hook_z SAE, write the results.

Writes `families.csv` and `families.json` (one row per feature and detector) and each
detector's figures (`<name>.html`, and `<name>.png` where kaleido can render) into `--out`.
With the `taxonomy` detector (default), `families.json` also holds the per-head table
(`heads`), `heads.html` draws it and the table is printed. With evaluation tokens, the
per-head evals (explained variance, CE loss recovered with only that head spliced, L0,
dead share; `attribution.head_evals`) are printed with it and saved as `head_evals`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from sae_lens_attn._atomic import atomic_path
from sae_lens_attn._safe_output import write_figure_html
from sae_lens_attn.commands._common import (
    add_model_argument,
    add_out_argument,
    add_runtime_arguments,
    add_sae_argument,
    check_device,
    check_features,
    check_features_fire,
    check_output_folder,
    load_model,
    load_sae,
    report_skipped,
)
from sae_lens_attn.commands._values import (
    non_negative_int,
    parse_index_list,
    positive_int,
)

# code_region is opt-in (`--detectors ...,code_region`): on gpt2-small's 24576 features its
# statistics add about a minute and a half of CPU to detect, which must stay within its time
DEFAULT_DETECTORS = (
    "induction,logit_lens,enrichment,current_token,previous_token,duplicate_token,local_context,"
    "high_level_context,taxonomy"
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "detect",
        help="find feature families: induction, logit-lens classes, enrichment, source-signature taxonomy",
        description="Run feature-family detectors (plugins of kind 'detector') on every "
        "feature of a hook_z SAE and write families.csv, families.json and plots.",
    )
    add_sae_argument(parser)
    add_model_argument(parser)
    add_out_argument(parser, "detect_out")
    add_runtime_arguments(parser)
    parser.add_argument(
        "--detectors",
        default=DEFAULT_DETECTORS,
        help=f"comma-separated detector names (default: {DEFAULT_DETECTORS}); "
        "`sae-lens-attn plugins` lists every installed one",
    )
    parser.add_argument("--features", type=parse_index_list, help="features to analyse, e.g. 0-99,120 (default: all)")
    parser.add_argument(
        "--eval-sequences",
        type=non_negative_int,
        default=64,
        help="sequences of the embedded corpus (Python stdlib, test split, tokenized with the "
        "model's tokenizer) that decide which features are live; 0: every feature with a "
        "nonzero decoder row is live (default: 64)",
    )
    parser.add_argument("--context-size", type=positive_int, default=128, help="tokens per evaluation sequence (default: 128)")
    parser.add_argument("--n-prompts", type=positive_int, default=8, help="induction prompts per tested token (default: 8)")
    parser.add_argument(
        "--regex",
        type=regex_item,
        action="append",
        default=[],
        metavar="NAME=PATTERN",
        help="extra token set: tokens whose decoded text re.match-es PATTERN (repeatable)",
    )
    parser.add_argument(
        "--pvalues", choices=("ks", "permutation"), default="ks", help="enrichment p-values (default: ks)"
    )
    parser.add_argument(
        "--no-final-ln",
        action="store_true",
        help="logit weights straight through W_U, without the final LayerNorm's weight",
    )
    parser.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a source-signature detector option, e.g. min_dfa_share=0.6 (repeatable; see "
        "docs/taxonomy.md for every name and its default)",
    )
    parser.add_argument("--no-head-evals", action="store_true",
                        help="skip the per-head evals (2 model passes per head over the evaluation tokens)")
    parser.add_argument("--no-png", action="store_true", help="write figures as HTML only")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts and p-values")
    return parser


def regex_item(text: str) -> str:
    """argparse type: `NAME=PATTERN` with a pattern `re` compiles."""
    name, sep, pattern = text.partition("=")
    if not sep or not name or not pattern:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected NAME=PATTERN, e.g. --regex 'year=^ ?1[89]\\d\\d$'")
    try:
        re.compile(pattern)
    except re.error as err:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {pattern!r} is not a valid regular expression ({err})") from None
    return text


def parse_regex(items: list[str]) -> dict[str, str]:
    """['name=pattern', ...] (each checked by `regex_item`) -> {name: pattern}."""
    return dict(regex_item(item).partition("=")[::2] for item in items)


def parse_thresholds(items: list[str]) -> dict[str, float]:
    """['name=value', ...] -> {name: value} for the source-signature and code-region
    detectors' options."""
    from sae_lens_attn.detectors.code_region import RegionThresholds
    from sae_lens_attn.detectors.signature import SignatureOptions
    from sae_lens_attn.detectors.source_detectors import SignatureThresholds

    valid = {**vars(SignatureThresholds()), **vars(SignatureOptions()), **vars(RegionThresholds())}
    chosen: dict[str, float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in valid:
            raise ValueError(f"--threshold {item!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(valid))}")
        try:
            value = type(valid[name])(text) if isinstance(valid[name], int) else float(text)
        except ValueError:
            raise ValueError(f"--threshold {item!r}: {text!r} is not a number") from None
        chosen[name] = value
    try:  # range checks live with the options themselves
        SignatureThresholds.from_options(chosen)
        SignatureOptions.from_options(chosen)
        RegionThresholds.from_options(chosen)
    except ValueError as error:
        raise ValueError(f"--threshold: {error}") from None
    return chosen


def evaluation_tokens(model: Any, n_sequences: int, context_size: int):
    """`[n, context_size]` tokens of the embedded corpus's test split, or None."""
    if n_sequences <= 0 or getattr(model, "tokenizer", None) is None:
        return None
    from sae_lens_attn.models.dataset import corpus_tokens

    return corpus_tokens(model.tokenizer, min(context_size, model.cfg.n_ctx), n_sequences, "test")


def save_figure(figure: Any, out_dir: Path, stem: str, png: bool = True) -> list[Path]:
    """`stem.html` (plotly.js embedded: opens offline) and `stem.png` where kaleido can
    render, each written atomically; a PNG that cannot be made is reported, not fatal."""
    written = [write_figure_html(figure, out_dir / f"{stem}.html", include_plotlyjs=True)]
    if not png:
        return written
    try:
        with atomic_path(out_dir / f"{stem}.png") as temporary:
            figure.write_image(temporary, format="png", width=1000, height=650)
        written.append(out_dir / f"{stem}.png")
    except Exception as error:  # kaleido missing or no browser for it to drive
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
        print(f"note: no PNG figures ({type(error).__name__}: {reason}); the .html files hold "
              "them (--no-png skips PNGs)")
    return written


def families_table(rows: list[Any], detectors: list[str]) -> list[tuple[str, ...]]:
    """One line per family found, and a "none found" line for each detector that found none."""
    from sae_lens_attn.detectors.results import family_summary

    summary = family_summary(rows)
    table = []
    for detector in detectors:
        found = summary.get(detector, {"live": 0, "families": {}})
        live = str(found["live"])
        for family, stats in found["families"].items():
            table.append((detector, family, str(stats["count"]), f"{stats['share_of_live']:.1%}", live))
        if not found["families"]:
            table.append((detector, "(none found)", "0", f"{0:.1%}", live))
    return table


def analysed_features(features: list[int] | None, d_sae: int, skipped: tuple[int, ...]) -> list[int] | None:
    """`--features` (None: all) without the features skipped for NaN/inf weights; an
    `InvalidInputError` when that leaves none of the chosen ones."""
    from sae_lens_attn.errors import InvalidInputError

    if not skipped:
        return features
    left = [f for f in (range(d_sae) if features is None else features) if f not in set(skipped)]
    if not left:
        raise InvalidInputError(f"--features: every chosen feature has NaN/inf weights and is skipped "
                                f"(--allow-nonfinite); choose others than {list(skipped)[:10]}")
    return left


def run(args: argparse.Namespace) -> int:
    import torch

    from sae_lens_attn.commands.plugins import format_table
    from sae_lens_attn.detectors.heads_table import format_heads_table, heads_table
    from sae_lens_attn.detectors.results import save_family_rows
    from sae_lens_attn.errors import InvalidInputError
    from sae_lens_attn.plugins import get_plugin_manager
    from sae_lens_attn.sources.head_layout import HeadLayout
    from sae_lens_attn.sources.weight_check import skipped_features

    regex = parse_regex(args.regex)
    try:
        thresholds = parse_thresholds(args.threshold)
    except ValueError as error:
        raise InvalidInputError(str(error)) from None
    names = [name.strip() for name in args.detectors.split(",") if name.strip()]
    if not names:
        raise InvalidInputError(f"--detectors {args.detectors!r}: no detector named; "
                                f"expected names such as {DEFAULT_DETECTORS}")
    manager = get_plugin_manager()
    try:
        detectors = {name: manager.get("detector", name) for name in names}
    except ValueError as error:
        raise InvalidInputError(f"--detectors: {error}") from None
    check_device(args.device)
    check_output_folder(args.out)

    torch.manual_seed(args.seed)
    sae = load_sae(args.sae, device=args.device, allow_nonfinite=args.allow_nonfinite)
    check_features(args.features, sae.cfg.d_sae)
    skipped = skipped_features(sae)
    features = analysed_features(args.features, sae.cfg.d_sae, skipped)
    model = load_model(args.model).to(args.device, print_details=False)  # loaders say nothing either
    layout = HeadLayout.from_sae(sae, model)
    print(f"SAE {args.sae}: {sae.cfg.d_sae} features on {layout.hook_name} heads {list(layout.heads)}")
    report_skipped(sae)
    tokens = evaluation_tokens(model, args.eval_sequences, args.context_size)
    check_features_fire(model, sae, features, tokens, f"the {args.eval_sequences} evaluation sequences")
    options = {
        "features": features,
        "tokens": tokens,
        "n_prompts": args.n_prompts,
        "regex": regex,
        "method": args.pvalues,
        "through_final_ln": not args.no_final_ln,
        "seed": args.seed,
        "progress": True,
        **thresholds,
    }
    rows = []
    figures = {}
    for name, detector in detectors.items():
        detect = getattr(detector, "detect", detector)  # a plain function is a detector too
        found = detect(model, sae, layout, family_rows=list(rows), **options)
        rows.extend(found)
        if hasattr(detector, "figures"):
            figures.update(detector.figures(found, model))
        notes = {note for row in found for note in row.evidence.get("notes", [])}
        for note in sorted(notes):
            print(f"note ({name}): {note}")

    head_evals = None
    if options["tokens"] is not None and not args.no_head_evals:
        from sae_lens_attn.attribution.head_evals import evaluate_heads

        head_evals = evaluate_heads(model, sae, layout, options["tokens"]).to_dict()
    written = list(save_family_rows(rows, args.out, skipped_nonfinite=skipped, head_evals=head_evals))
    png = not args.no_png
    for stem, figure in figures.items():
        files = save_figure(figure, args.out, stem, png=png)
        png = png and files[-1].suffix == ".png"  # after one failure, do not try again
        written.extend(files)
    print(format_table(families_table(rows, list(detectors)),
                       ("detector", "family", "features", "share of live", "live")))
    heads = heads_table(rows)
    if heads:
        head_rows, header = format_heads_table(heads, head_evals)
        poly = heads["polysemanticity"]
        print(f"\ntaxonomy per head (a feature counts for the head with most of its decoder norm; "
              f"in brackets: token-specific; {poly['share_polysemantic']:.0%} of heads polysemantic)"
              + ("; per-head evals: EV, CE loss recovered with only that head spliced, L0, dead" if head_evals else ""))
        print(format_table(head_rows, header))
    elif head_evals:
        from sae_lens_attn.attribution.head_evals import head_evals_rows

        print("\nper-head evals (EV, CE loss recovered with only that head spliced, L0, dead share)")
        print(format_table(*head_evals_rows(head_evals)))
    print("wrote " + ", ".join(str(path) for path in written))
    return 0
