"""`sae-lens-attn export neuronpedia`: an SAE's features as Neuronpedia batch files.

The files are those sae_dashboard's Neuronpedia runner writes (`batch-N.json`,
`skipped_indexes.json`, `run_settings.json`), with our DFA by source position in
Neuronpedia's DFA fields and head attribution, detector families and the hook_z head
layout added (`sae_lens_attn.dashboard.neuronpedia`). Prompts are rows of the embedded
corpus tokenized with the model's tokenizer, as for `dashboard`.
"""

from __future__ import annotations

import argparse

from sae_lens_attn.commands._common import (
    add_model_argument,
    add_runtime_arguments,
    add_sae_argument,
    check_device,
    check_features,
    check_model_name,
    check_output_folder,
    load_model,
    load_sae,
)
from sae_lens_attn.commands._values import int_at_least, parse_index_list, positive_int
from sae_lens_attn.commands.dashboard import read_families
from sae_lens_attn.errors import InvalidInputError

DEFAULT_SET = "att-sla"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from pathlib import Path

    parser = subparsers.add_parser(
        "export",
        help="export an SAE's features for other tools (Neuronpedia)",
        description="Export an SAE's features in another tool's format.",
    )
    targets = parser.add_subparsers(dest="target", metavar="FORMAT", required=True)
    np_parser = targets.add_parser(
        "neuronpedia",
        help="Neuronpedia batch files (sae_dashboard's Neuronpedia runner format) with DFA "
        "by source position, head attribution and families",
        description="Write the batch files sae_dashboard's Neuronpedia runner writes, for "
        "every feature of a hook_z SAE (or --features), with our DFA by source position in "
        "Neuronpedia's DFA fields and head attribution, detector families and the head "
        "layout as extra fields (docs/neuronpedia.md).",
    )
    add_sae_argument(np_parser)
    add_model_argument(np_parser)
    np_parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder: new, empty, or an unfinished export of the same settings "
        "(its finished batches are kept)",
    )
    np_parser.add_argument(
        "--features",
        type=parse_index_list,
        help="feature indices and ranges, e.g. 0-49,60 (default: all)",
    )
    np_parser.add_argument(
        "--families",
        type=Path,
        help="families.json written by `sae-lens-attn detect`, exported per "
        "feature (default: none, `families` is null)",
    )
    np_parser.add_argument(
        "--model-id", help="Neuronpedia model id (default: the SAE's model_name, else --model)"
    )
    np_parser.add_argument("--sae-set", default=DEFAULT_SET, help="Neuronpedia source set name")
    np_parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=128,
        help="features per batch file (the runner's n_features_at_a_time)",
    )
    np_parser.add_argument(
        "--n-prompts", type=positive_int, default=512, help="corpus rows to search"
    )
    np_parser.add_argument(
        "--context-size",
        type=int_at_least(2),
        default=128,
        help="tokens per row (Neuronpedia's n_tokens_in_prompt)",
    )
    np_parser.add_argument(
        "--split", default="test", choices=["train", "test"], help="corpus split"
    )
    np_parser.add_argument("--device", default="cpu", help="torch device")
    add_runtime_arguments(np_parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from sae_lens_attn.dashboard.neuronpedia import (
        NeuronpediaSettings,
        check_export_folder,
        export_neuronpedia,
    )
    from sae_lens_attn.models.dataset import corpus_tokens
    from sae_lens_attn.sources.head_layout import HeadLayout

    check_device(args.device)
    check_output_folder(args.out)
    check_export_folder(args.out)
    check_model_name(args.model)  # a missing model folder fails before the SAE downloads
    families = read_families(args.families) if args.families else None
    sae = load_sae(args.sae, device=args.device, allow_nonfinite=args.allow_nonfinite)
    if args.features is not None:
        check_features(args.features, sae.cfg.d_sae)
    model = load_model(args.model).to(args.device, print_details=False)
    layout = HeadLayout.from_sae(sae, model)
    if model.tokenizer is None:
        raise InvalidInputError(f"--model {args.model!r}: has no tokenizer to build prompts with")
    if args.context_size > model.cfg.n_ctx:
        raise InvalidInputError(
            f"--context-size {args.context_size}: longer than the model's "
            f"context (n_ctx={model.cfg.n_ctx}); use 2..{model.cfg.n_ctx}"
        )
    tokens = corpus_tokens(model.tokenizer, args.context_size, args.n_prompts, split=args.split)
    settings = NeuronpediaSettings(
        model_id=args.model_id or sae.cfg.metadata.get("model_name") or str(args.model),
        sae_set=args.sae_set,
        dataset=f"sae-lens-attn embedded corpus ({args.split} split)",
        batch_size=args.batch_size,
        device=args.device,
    )
    export = export_neuronpedia(
        model,
        sae,
        tokens,
        args.out,
        settings,
        features=args.features,
        families=families,
        layout=layout,
        progress=True,
    )
    if export.skipped:
        print(
            f"note: skipped features {', '.join(map(str, export.skipped))} (zero or "
            "non-finite decoder row: they write nothing), listed in skipped_indexes.json"
        )
    print(
        f"wrote {len(export.batches)} batch file(s) for {layout.hook_name} to {export.folder} "
        f"(model_id {settings.model_id!r}, sae_set {settings.sae_set!r})"
    )
    return 0
