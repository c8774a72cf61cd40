"""`sae-lens-attn atlas`: every live feature of a hook_z SAE as a static site.

Writes `--out` (a new or empty folder, or an earlier atlas, which it replaces):
`index.html` (a sortable, filterable row per feature, summary plots) and `feature.html#N`
(sae_dashboard's view and every dashboard panel of feature N), opening from `file://`
with no server (`sae-lens-attn serve SITE` serves it too). Features are computed a shard
at a time; an interrupted run continues with `--resume`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sae_lens_attn.commands._common import (
    add_model_argument,
    add_runtime_arguments,
    add_sae_argument,
    check_device,
    check_features,
    check_output_folder,
    load_model,
    load_sae,
)
from sae_lens_attn.commands._values import comma_list, parse_index_list, positive_int
from sae_lens_attn.commands.dashboard import add_prompt_arguments, prompt_tokens, read_families
from sae_lens_attn.errors import InvalidInputError

DEFAULT_DETECTORS = "logit_lens,taxonomy"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "atlas",
        help="a static site of every live feature (index + on-demand feature pages), offline",
        description="Write an atlas of a hook_z SAE: index.html, one row per live feature "
        "(taxonomy class, detector families, head, density, max activation, top promoted "
        "tokens; sortable, filterable, searchable) with summary plots, and feature.html "
        "with every dashboard panel of a feature, loaded on demand from sharded data. "
        "Opens from file:// with no server.",
    )
    add_sae_argument(parser)
    add_model_argument(parser)
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the site folder: new, empty, or an atlas written before (replaced)",
    )
    parser.add_argument(
        "--features",
        type=parse_index_list,
        help="feature indices and ranges, e.g. 0-499,600 (default: all; dead "
        "features are left out either way)",
    )
    parser.add_argument(
        "--families",
        type=Path,
        help="families.json written by `sae-lens-attn detect`: classes and families from it "
        "instead of running detectors (default: run --detectors)",
    )
    parser.add_argument(
        "--detectors",
        type=comma_list(str),
        default=DEFAULT_DETECTORS,
        help="detectors run for the classes and families when --families is not given "
        f"(default: {DEFAULT_DETECTORS}; 'none': no classes)",
    )
    add_prompt_arguments(parser)
    parser.add_argument(
        "--shard-size",
        type=positive_int,
        default=128,
        help="feature indices per data file and per batched computation",
    )
    parser.add_argument(
        "--panels",
        type=comma_list(str),
        help="comma-separated panel names (default: every installed panel)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted atlas of the same SAE and settings",
    )
    parser.add_argument("--device", default="cpu", help="torch device")
    add_runtime_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from sae_lens_attn.dashboard import DashboardConfig
    from sae_lens_attn.dashboard.atlas import AtlasConfig, build_atlas
    from sae_lens_attn.dashboard.atlas.site import check_site
    from sae_lens_attn.dashboard.render import load_panels
    from sae_lens_attn.dead import silent_label
    from sae_lens_attn.plugins import get_plugin_manager
    from sae_lens_attn.sources.head_layout import HeadLayout

    check_device(args.device)
    check_output_folder(args.out)
    check_site(args.out)
    families = read_families(args.families) if args.families else None
    detectors = () if args.detectors == ["none"] else tuple(args.detectors)
    manager = get_plugin_manager()
    try:
        for name in detectors:
            manager.get("detector", name)
    except ValueError as error:
        raise InvalidInputError(f"--detectors: {error}") from None
    panels = load_panels(args.panels)
    sae = load_sae(args.sae, device=args.device)
    check_features(args.features, sae.cfg.d_sae)
    model = load_model(args.model).to(args.device, print_details=False)
    layout = HeadLayout.from_sae(sae, model)
    tokens = prompt_tokens(args, model)
    config = AtlasConfig(
        shard_size=args.shard_size,
        detectors=detectors,
        dashboard=DashboardConfig(device=args.device),
    )
    files = build_atlas(
        model,
        sae,
        tokens,
        args.out,
        features=args.features,
        families=families,
        config=config,
        panels=panels,
        layout=layout,
        resume=args.resume,
        progress=True,
        title=f"{layout.hook_name} SAE {args.sae}",
    )
    note = (
        f" ({files.left_out} selected features left out: {silent_label(tokens.numel())} "
        "on these prompts, or a zero decoder row)"
        if files.left_out
        else ""
    )
    print(
        f"wrote {files.site}: {files.n_features} features{note}; open {files.index} in a "
        f"browser (or `sae-lens-attn serve {files.site}`)"
    )
    return 0
