"""`sae-lens-attn graph`: an attribution graph of one attention-SAE feature or one logit.

Writes `graph.json` (circuit-tracer's graph format, which its frontend and Neuronpedia's
viewer read; `sae-lens-attn serve OUT` serves circuit-tracer's frontend on it),
`graph-metadata.json` (the frontend's list of graphs) and `graph.html` (our page, opens
from `file://`).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sae_lens_attn._atomic import atomic_directory
from sae_lens_attn.commands._common import (
    add_allow_nonfinite_argument,
    add_model_argument,
    add_out_argument,
    add_runtime_arguments,
    check_output_folder,
    check_sae_folders,
    load_model,
    load_sae,
    report_skipped,
    sae_reference,
)
from sae_lens_attn.commands._values import non_negative_int, positive_int
from sae_lens_attn.errors import InvalidInputError

if TYPE_CHECKING:
    from sae_lens_attn.sources.pretrained_sae import PretrainedSAEName

GRAPH_FILE, METADATA_FILE = "graph.json", "graph-metadata.json"
_FEATURE = re.compile(r"^(\d+):(\d+)(?:@(\d+))?$")


def feature_spec(text: str) -> tuple[int, int, int | None]:
    """`LAYER:INDEX[@POS]` -> (layer, index, position or None)."""
    match = _FEATURE.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not LAYER:INDEX[@POS] (e.g. 1:619 or 1:619@7)"
        )
    layer, index, position = match.groups()
    return int(layer), int(index), None if position is None else int(position)


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1]")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "graph",
        help="attribution graph of an attention-SAE feature or a logit, back to the tokens",
        description="Recursive direct feature attribution with frozen attention patterns and "
        "LayerNorm scales: each node's pre-activation (or the logit) split exactly into edges "
        "from the attention-SAE features, SAE errors, MLP outputs (or MLP SAE and transcoder "
        "features) and token embeddings below it, each edge with its heads. Writes circuit-tracer's graph JSON and our own page.",
    )
    parser.add_argument(
        "--sae",
        required=True,
        action="append",
        type=str,
        help="one SAE per attention layer (repeatable): a saved SAE folder, a `train "
        "--layers` output folder with saes.json (all its SAEs), a SAELens pretrained "
        "RELEASE/SAE_ID, or RELEASE alone for every SAE of that release",
    )
    parser.add_argument(
        "--mlp-sae",
        action="append",
        default=[],
        help="an MLP SAE on blocks.L.hook_mlp_out (a saved SAE folder, repeatable, one per "
        "layer): that layer's MLP output becomes its active features (leaves) and one MLP "
        "error node per position (default: none, each MLP output is one node per position)",
    )
    parser.add_argument(
        "--transcoder",
        action="append",
        default=[],
        help="a SAELens transcoder reading blocks.L.ln2.hook_normalized or "
        "blocks.L.hook_resid_mid and writing that layer's MLP output (a saved folder, "
        "repeatable, one per layer; not on a layer with an --mlp-sae): its features get "
        "incoming edges through the frozen ln2, plus one MLP error node per position "
        "(default: none)",
    )
    add_allow_nonfinite_argument(parser)
    add_model_argument(parser)
    parser.add_argument("--prompt", required=True, help="text to run (a BOS token is prepended)")
    root = parser.add_mutually_exclusive_group(required=True)
    root.add_argument(
        "--feature",
        type=feature_spec,
        help="the root feature as LAYER:INDEX[@POS] (default: none; POS defaults to where it "
        "is most active)",
    )
    root.add_argument(
        "--logit",
        help="the root logit: a token text that is one token, at the last position (one of "
        "--feature and --logit is required; default: none)",
    )
    parser.add_argument(
        "--depth",
        type=positive_int,
        default=None,
        help="expand nodes this many steps from the root (default: until only leaves are left)",
    )
    parser.add_argument(
        "--node-threshold",
        type=fraction,
        default=0.8,
        help="keep the nodes holding this share of the total influence",
    )
    parser.add_argument(
        "--edge-threshold",
        type=fraction,
        default=0.98,
        help="keep the edges holding this share of the total edge influence",
    )
    parser.add_argument(
        "--max-nodes",
        type=non_negative_int,
        default=500,
        help="keep at most this many feature and error nodes",
    )
    parser.add_argument(
        "--feature-url",
        default=None,
        help="page of a feature, with {layer} and {feature}, e.g. "
        "'atlas-L{layer}/feature.html#{feature}' (relative to OUT) or a URL: "
        "clicking a feature in graph.html opens it (default: no link)",
    )
    add_out_argument(parser, "graph")
    add_runtime_arguments(parser)
    return parser


def expand_references(values: list[str]) -> list[Path | PretrainedSAEName]:
    """Every SAE that the `--sae` values name: a saes.json folder gives all its SAEs, a
    release name alone every SAE id of the release."""
    from sae_lens_attn.sources.pretrained_sae import PretrainedSAEName, pretrained_releases
    from sae_lens_attn.training.outputs import SAE_CONFIG_FILENAME, SAE_LIST_FILENAME, read_sae_list

    references: list[Path | PretrainedSAEName] = []
    for value in values:
        path = Path(value)
        if (path / SAE_LIST_FILENAME).is_file() and not (path / SAE_CONFIG_FILENAME).is_file():
            try:
                entries = read_sae_list(path)
            except ValueError as error:
                raise InvalidInputError(f"--sae {value}: {error}") from None
            references.extend(path / entry["path"] for entry in entries)
            continue
        if not path.exists() and "/" not in value:
            registry = pretrained_releases()
            if value in registry:
                references.extend(PretrainedSAEName(value, i) for i in registry[value].saes_map)
                continue
        references.append(sae_reference(value))
    return references


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sae_lens_attn.attribution.graph import Pruning, build_graph
    from sae_lens_attn.dashboard.graph_json import graph_json
    from sae_lens_attn.dashboard.graph_page import PAGE_NAME, graph_page
    from sae_lens_attn.dashboard.page import script_safe_json
    from sae_lens_attn.models.token_display import quoted, token_display_fn
    from sae_lens_attn.sources.model_inputs import check_token_rows

    check_output_folder(args.out)
    references = expand_references(args.sae)
    check_sae_folders(*[r for r in references if isinstance(r, Path)])
    mlp_options = [("--mlp-sae", v) for v in args.mlp_sae] + [
        ("--transcoder", v) for v in args.transcoder
    ]
    for option, value in mlp_options:
        check_sae_folders(value, hook_z=False, option=option)
    steps = tqdm(total=len(references) + len(mlp_options) + 2, desc="graph", unit="step")
    try:
        saes = []
        for reference in references:
            sae = load_sae(
                reference if isinstance(reference, Path) else str(reference),
                allow_nonfinite=args.allow_nonfinite,
            )
            report_skipped(sae)
            saes.append(sae)
            steps.update()
        mlp: dict[str, list] = {"--mlp-sae": [], "--transcoder": []}
        for option, value in mlp_options:
            sae = load_sae(value, hook_z=False, option=option, allow_nonfinite=args.allow_nonfinite)
            report_skipped(sae)
            mlp[option].append(sae)
            steps.update()
        model = load_model(args.model)
        steps.update()
        tokens = model.to_tokens(args.prompt, truncate=False)[0]
        check_token_rows(tokens, model, "--prompt (with its BOS token)")
        root: dict = {}
        if args.logit is not None:
            ids = model.to_tokens(args.logit, prepend_bos=False)[0].tolist()
            if len(ids) != 1:
                raise InvalidInputError(
                    f"--logit {args.logit!r}: is {len(ids)} tokens for this model's tokenizer "
                    "(expected one token; mind a leading space)"
                )
            root["logit_token"] = ids[0]
        else:
            layer, index, position = args.feature
            root.update(feature=(layer, index), position=position)
        pruning = Pruning(args.node_threshold, args.edge_threshold, args.max_nodes)
        graph = build_graph(
            model,
            saes,
            tokens,
            depth=args.depth,
            pruning=pruning,
            mlp_saes=mlp["--mlp-sae"],
            transcoders=mlp["--transcoder"],
            **root,
        )
        steps.update()
    finally:
        steps.close()
    if graph.missing_layers:
        missing = ", ".join(map(str, graph.missing_layers))
        print(
            f"warning: no SAE for layer(s) {missing}: their attention output is one error "
            "node per position",
            file=sys.stderr,
        )
    decode = token_display_fn(model.tokenizer)
    slug = "graph"
    data = graph_json(graph, decode, args.prompt, slug, scan=model.cfg.model_name)
    text = script_safe_json(data)
    metadata = script_safe_json({"graphs": [data["metadata"]]})
    page = graph_page(data, args.feature_url)
    with atomic_directory(args.out) as folder:
        (folder / GRAPH_FILE).write_text(text, encoding="utf-8")
        (folder / METADATA_FILE).write_text(metadata, encoding="utf-8")
        (folder / PAGE_NAME).write_text(page, encoding="utf-8")
    info = data["metadata"]["info"]
    target = graph.target
    where = f"at position {target.position} ({quoted(decode(int(tokens[target.position])))})"
    name = (
        f"logit {quoted(decode(target.token))}"
        if target.is_logit
        else f"feature {target.layer}:{target.feature}"
    )
    print(
        f"{name} {where}: value {graph.root_value:.4f}; edges + bias close to within "
        f"{graph.closure_max_abs:.1e}"
    )
    print(
        f"  {len(data['nodes'])} nodes and {len(data['links'])} edges kept of "
        f"{graph.n_nodes} nodes; replacement {info['replacement_score']:.3f} "
        f"(pruned {info['pruned_replacement_score']:.3f}), completeness "
        f"{info['completeness_score']:.3f} (pruned {info['pruned_completeness_score']:.3f})"
    )
    print(
        f"wrote {GRAPH_FILE}, {METADATA_FILE}, {PAGE_NAME} to {args.out}; open "
        f"{args.out / PAGE_NAME}, or `sae-lens-attn serve {args.out}` for circuit-tracer's "
        "viewer"
    )
    return 0
