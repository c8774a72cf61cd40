"""`sae-lens-attn dashboard`: sae_dashboard's feature pages with our panels, offline.

Writes `dashboard.html` (one self-contained page: pick a feature in the dropdown) and
`features.json` (per-feature panel data, DFA in Neuronpedia's field names). Prompts are
rows of the embedded corpus tokenized with the model's tokenizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
    comma_list,
    int_at_least,
    non_negative_int,
    parse_index_list,
    positive_int,
)
from sae_lens_attn.errors import InvalidInputError, MissingInputError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "dashboard",
        help="feature dashboards with DFA by source position, head and logit-lens panels",
        description="Render sae_dashboard's feature-centric page for a hook_z SAE with extra "
        "panels (DFA by source position and head, head attribution, logit-lens statistics, "
        "detector verdicts) as one HTML file that opens offline, plus features.json.",
    )
    add_sae_argument(parser)
    add_model_argument(parser)
    parser.add_argument(
        "--features", type=parse_index_list, default="0-49",
        help="feature indices and ranges, e.g. 0-49,60",
    )
    parser.add_argument(
        "--families", type=Path,
        help="families.json written by the detectors: shown in the family and logit-lens "
        "panels (default: none, those panels say no detector ran)",
    )
    add_prompt_arguments(parser)
    parser.add_argument(
        "--panels", type=comma_list(str),
        help="comma-separated panel names (default: every installed panel; see "
        "`sae-lens-attn plugins`)",
    )
    parser.add_argument(
        "--dfa-examples", type=non_negative_int,
        help="how many of the shown top examples get a DFA row (default: all 8)",
    )
    parser.add_argument("--device", default="cpu", help="torch device")
    add_out_argument(parser, "dashboard")
    add_runtime_arguments(parser)
    return parser


def read_families(path: Path) -> list:
    """`FamilyRow`s of `--families` (families.json/.csv or a folder with one), or an
    `InvalidInputError` saying what the file should be."""
    from sae_lens_attn.detectors.results import load_family_rows

    if not path.exists():
        raise MissingInputError(f"--families {path}: does not exist; expected families.json "
                                "(or .csv, or their folder) written by `sae-lens-attn detect`")
    try:
        return load_family_rows(path)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise InvalidInputError(f"--families {path}: not a families file written by "
                                f"`sae-lens-attn detect` ({type(err).__name__}: {err})") from None


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """`--n-prompts`, `--context-size`, `--split`: the corpus rows searched for activations."""
    parser.add_argument("--n-prompts", type=positive_int, default=512, help="corpus rows to search")
    parser.add_argument("--context-size", type=int_at_least(2), default=64, help="tokens per row")
    parser.add_argument(
        "--split", default="test", choices=["train", "test"], help="corpus split"
    )


def prompt_tokens(args: argparse.Namespace, model):
    """`[n_prompts, context_size]` rows of the embedded corpus in `model`'s tokenizer, the
    model and the sizes checked first."""
    from sae_lens_attn.models.dataset import corpus_tokens

    if model.tokenizer is None:
        raise InvalidInputError(f"--model {args.model!r}: has no tokenizer to build prompts with")
    if args.context_size > model.cfg.n_ctx:
        raise InvalidInputError(f"--context-size {args.context_size}: longer than the model's "
                                f"context (n_ctx={model.cfg.n_ctx}); use 2..{model.cfg.n_ctx}")
    return corpus_tokens(model.tokenizer, args.context_size, args.n_prompts, split=args.split)


def run(args: argparse.Namespace) -> int:
    from sae_lens_attn.dashboard import DashboardConfig, render_dashboard
    from sae_lens_attn.dashboard.render import load_panels
    from sae_lens_attn.sources.head_layout import HeadLayout

    check_device(args.device)
    check_output_folder(args.out)
    families = read_families(args.families) if args.families else None
    panels = load_panels(args.panels)
    sae = load_sae(args.sae, device=args.device, allow_nonfinite=args.allow_nonfinite)
    check_features(args.features, sae.cfg.d_sae)
    model = load_model(args.model).to(args.device, print_details=False)  # loaders say nothing either
    HeadLayout.from_sae(sae, model)  # layout against the model, before the corpus
    tokens = prompt_tokens(args, model)
    report_skipped(sae)
    check_features_fire(model, sae, args.features, tokens, f"the {args.n_prompts} prompts")
    files = render_dashboard(
        model,
        sae,
        tokens,
        args.features,
        args.out,
        families=families,
        config=DashboardConfig(dfa_examples=args.dfa_examples, device=args.device),
        panels=panels,
        progress=True,
    )
    if files.skipped:
        print(f"note: skipped features {', '.join(map(str, files.skipped))} (zero decoder row: they write nothing)")
    if files.skipped_nonfinite:
        print(f"note: skipped features with NaN/inf weights {', '.join(map(str, files.skipped_nonfinite))} "
              "(--allow-nonfinite)")
    size_mb = files.html.stat().st_size / 1e6
    print(f"wrote {files.html} ({size_mb:.1f} MB) and {files.json}")
    return 0
