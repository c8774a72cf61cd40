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
    load_model,
    load_sae,
    parse_index_list,
)


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
        "--features", type=parse_index_list, default=parse_index_list("0-49"),
        help="feature indices and ranges, e.g. 0-49,60 (default 0-49)",
    )
    parser.add_argument(
        "--families", type=Path,
        help="families.json written by the detectors: shown in the family and logit-lens panels",
    )
    parser.add_argument("--n-prompts", type=int, default=512, help="corpus rows to search (512)")
    parser.add_argument("--context-size", type=int, default=64, help="tokens per row (64)")
    parser.add_argument(
        "--split", default="test", choices=["train", "test"], help="corpus split (test)"
    )
    parser.add_argument(
        "--panels", type=lambda text: [p for p in text.split(",") if p],
        help="comma-separated panel names (default: every installed panel; see "
        "`sae-lens-attn plugins`)",
    )
    parser.add_argument(
        "--dfa-examples", type=int,
        help="how many of the shown top examples get a DFA row (default: all 8)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (cpu)")
    add_out_argument(parser, "dashboard")
    add_runtime_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from sae_lens_attn.dashboard import DashboardConfig, render_dashboard
    from sae_lens_attn.detectors.results import load_family_rows
    from sae_lens_attn.models.dataset import corpus_tokens

    model = load_model(args.model).to(args.device)
    sae = load_sae(args.sae, device=args.device)
    if model.tokenizer is None:
        raise SystemExit(f"error: model {args.model!r} has no tokenizer to build prompts with")
    tokens = corpus_tokens(model.tokenizer, args.context_size, args.n_prompts, split=args.split)
    families = load_family_rows(args.families) if args.families else None
    try:
        files = render_dashboard(
            model,
            sae,
            tokens,
            args.features,
            args.out,
            families=families,
            config=DashboardConfig(dfa_examples=args.dfa_examples, device=args.device),
            panels=args.panels,
            progress=True,
        )
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    size_mb = files.html.stat().st_size / 1e6
    print(f"wrote {files.html} ({size_mb:.1f} MB) and {files.json}")
    return 0
