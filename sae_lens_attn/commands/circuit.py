"""`sae-lens-attn circuit`: circuit attribution of one feature on one prompt.

Writes `upstream.csv` (contribution of every residual component at the top source
positions, per head, plus the bias terms), `query_key.csv` (what raises the top head's
attention score), `downstream.csv` (direct vs total logit effects of the top promoted
tokens), `summary.json`, and the plots `upstream.html` and `effects.html`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sae_lens_attn._atomic import atomic_write_text
from sae_lens_attn._safe_output import write_csv, write_figure_html
from sae_lens_attn.commands._common import (
    add_model_argument,
    add_out_argument,
    add_runtime_arguments,
    add_sae_argument,
    check_output_folder,
    check_sae_folders,
    load_model,
    load_sae,
    report_skipped,
)
from sae_lens_attn.commands._values import (
    non_negative_int,
    positive_int,
)
from sae_lens_attn.errors import InvalidInputError
from sae_lens_attn.models.token_display import quoted

if TYPE_CHECKING:
    from sae_lens_attn.attribution.circuit.feature import FeatureCircuit


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "circuit",
        help="upstream sources and downstream effects of one attention-SAE feature",
        description="Circuit attribution of a hook_z SAE feature on a prompt: its "
        "pre-activation split into upstream residual components at the top source positions "
        "(value side), what raises the top head's attention score (query/key side), and its "
        "direct vs total effect on the logits.",
    )
    add_sae_argument(parser)
    add_model_argument(parser)
    parser.add_argument("--feature", type=non_negative_int, required=True, help="feature index")
    parser.add_argument("--prompt", required=True, help="text to run (a BOS token is prepended)")
    parser.add_argument(
        "--upstream-sae",
        type=Path,
        action="append",
        default=[],
        help="SAE folder, or SAELens pretrained RELEASE/SAE_ID, on an earlier hook (MLP out, "
        "attn out, hook_z, residual): its features and error replace the components that "
        "hook carries (repeatable)",
    )
    parser.add_argument(
        "--destination", type=non_negative_int,
        help="position to explain (default: where the feature peaks)"
    )
    parser.add_argument("--n-sources", type=positive_int, default=3, help="top source positions")
    parser.add_argument("--top-tokens", type=positive_int, default=10, help="promoted tokens shown")
    parser.add_argument("--top-components", type=positive_int, default=20, help="bars in the plot")
    add_out_argument(parser, "circuit")
    add_runtime_arguments(parser)
    return parser


def write_circuit(
    circuit: FeatureCircuit,
    out: Path,
    decode: Callable[[int], str] = str,
    top_tokens: int = 10,
    top_components: int = 20,
) -> dict[str, Any]:
    """Write the tables, `summary.json` and plots of `circuit` into `out`; returns the
    summary. Everything is computed before the first file is written, and each file is
    written atomically, so a failure leaves no partial output."""
    from sae_lens_attn.attribution.circuit.feature import (
        circuit_summary,
        downstream_rows,
        query_key_rows,
        upstream_rows,
    )
    from sae_lens_attn.dashboard.circuit_panel import effects_figure, upstream_figure

    if top_tokens < 1 or top_components < 1:
        raise InvalidInputError(f"top_tokens={top_tokens}, top_components={top_components}: "
                                "both must be >= 1")
    tables = {
        "upstream.csv": upstream_rows(circuit, decode),
        "query_key.csv": query_key_rows(circuit),
        "downstream.csv": downstream_rows(circuit, top_tokens, decode),
    }
    summary = circuit_summary(circuit, decode=decode)
    summary_text = json.dumps(summary, indent=2)
    figures = {"upstream.html": upstream_figure(circuit, decode, top_components)}
    if circuit.downstream is not None:
        figures["effects.html"] = effects_figure(circuit, decode, top_tokens)
    for name, rows in tables.items():
        write_csv(out / name, rows)
    atomic_write_text(out / "summary.json", summary_text)
    for name, figure in figures.items():
        write_figure_html(figure, out / name, include_plotlyjs="directory")
    return summary


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sae_lens_attn.attribution.circuit.feature import feature_circuit
    from sae_lens_attn.models.token_display import token_display_fn
    from sae_lens_attn.sources.head_layout import HeadLayout
    from sae_lens_attn.sources.model_inputs import check_token_rows

    check_output_folder(args.out)
    check_sae_folders(args.sae)
    check_sae_folders(*args.upstream_sae, hook_z=False, option="--upstream-sae")
    sae = load_sae(args.sae, allow_nonfinite=args.allow_nonfinite)
    if args.feature >= sae.cfg.d_sae:
        raise InvalidInputError(f"--feature {args.feature}: out of range; this SAE has features "
                                f"0..{sae.cfg.d_sae - 1}")
    if args.feature in report_skipped(sae):
        raise InvalidInputError(f"--feature {args.feature}: has NaN/inf weights and is skipped "
                                "(--allow-nonfinite); choose another feature")
    upstream = [
        load_sae(path, hook_z=False, option="--upstream-sae", allow_nonfinite=args.allow_nonfinite)
        for path in args.upstream_sae
    ]
    steps = tqdm(total=4, desc="circuit", unit="step")
    try:
        model = load_model(args.model)
        layout = HeadLayout.from_sae(sae, model)
        steps.update()
        tokens = model.to_tokens(args.prompt)[0]
        check_token_rows(tokens, model, "--prompt (with its BOS token)")
        decode = token_display_fn(model.tokenizer)
        circuit = feature_circuit(
            model, sae, tokens, args.feature, destination=args.destination,
            n_sources=args.n_sources, upstream_saes=upstream,
            downstream=layout.uses_all_heads,
        )
    finally:
        steps.close()

    summary = write_circuit(circuit, args.out, decode, args.top_tokens, args.top_components)

    print(
        f"feature {circuit.feature} at position {circuit.destination} "
        f"({quoted(summary['destination_token'])}): activation {circuit.activation:.4f}, "
        f"pre-activation {circuit.value.pre_activation:.4f} "
        f"(parts add up to within {abs(circuit.value.closure_error):.1e})"
    )
    for source in summary["top_sources"]:
        print(f"  source {source['source']:>3} {quoted(source['token'])}: DFA {source['dfa']:+.4f}")
    for row in summary.get("top_promoted_direct", []):
        print(f"  promotes {quoted(row['token'])}: direct {row['direct']:+.3f}, total {row['total']:+.3f}")
    print(f"wrote {', '.join(sorted(p.name for p in args.out.iterdir()))} to {args.out}")
    return 0
