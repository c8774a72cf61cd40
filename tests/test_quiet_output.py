"""Quiet, honest output: exactly the known upstream warnings are hidden, SAELens's training
bar moves on every step, models load without "Moving model to device", heads read
`L{l}H{h}`, detectors that found nothing are listed, and default output folders are ignored."""

import logging
import re
import warnings
from pathlib import Path

import torch
from eindex import eindex

from sae_lens_attn._upstream import (
    KNOWN_UPSTREAM_LOG_MESSAGES,
    KNOWN_UPSTREAM_WARNINGS,
    silence_known_upstream_warnings,
)
from sae_lens_attn.commands.detect import families_table
from sae_lens_attn.detectors.results import FamilyRow
from sae_lens_attn.sources.head_layout import HeadLayout, head_label
from sae_lens_attn.training import train_hook_z_sae

ROOT = Path(__file__).resolve().parents[1]
STORE = "sae_lens.training.activations_store"


def test_exactly_these_upstream_warnings_are_filtered():
    assert [(m[:40], c, mod) for m, c, mod in KNOWN_UPSTREAM_WARNINGS] == [
        (r"The training dataset contains fewer samp", UserWarning, r"sae_lens\.training\.activations_store\Z"),
        (r"To copy construct from a tensor, it is r", UserWarning, r"sae_lens\.training\.activations_store\Z"),
        (r"Using a non-tuple sequence for multidime", UserWarning, r"eindex\.indexing\Z"),
    ]
    assert len(KNOWN_UPSTREAM_LOG_MESSAGES) == 2  # the single- and the multi-SAE runner's notice


def _emitted(message: str, category: type[Warning], module: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_upstream_warnings()
        warnings.warn_explicit(message, category, "x.py", 1, module=module)
    return bool(caught)


def test_filters_hide_only_the_pinned_message_category_and_module():
    fewer = ("The training dataset contains fewer samples (8) than the number of samples required "
             "by your training configuration (4096).")
    assert not _emitted(fewer, UserWarning, STORE)
    assert _emitted(fewer, UserWarning, "sae_lens.training.activations_store_v2")  # other module
    assert _emitted(fewer, DeprecationWarning, STORE)  # other category
    assert _emitted("All samples in the training dataset have been exhausted", UserWarning, STORE)
    assert _emitted("Using a non-tuple sequence for multidimensional indexing is deprecated",
                    UserWarning, "my_package")


def _upstream_warnings(run) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [str(w.message) for w in caught]


def _matches_known(message: str) -> bool:
    return any(re.match(pattern, message, re.I) for pattern, _, _ in KNOWN_UPSTREAM_WARNINGS)


def test_the_pinned_warnings_still_occur_upstream_and_are_hidden_by_the_cli_filter(tiny_model, caplog):
    """When this fails because a warning no longer occurs, upstream fixed it: drop the filter."""
    tokens = torch.randint(0, 101, (8, 32), generator=torch.Generator().manual_seed(0))

    def train():
        train_hook_z_sae(tiny_model, 1, architecture="standard", dataset=tokens, training_tokens=1024,
                         train_batch_size_tokens=128, store_batch_size_prompts=4, expansion_factor=2)

    def index():
        eindex(torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3)), "b s [b s]")

    raw = _upstream_warnings(train) + _upstream_warnings(index)
    for pattern, _, _ in KNOWN_UPSTREAM_WARNINGS:
        assert any(re.match(pattern, message, re.I) for message in raw), f"no longer raised: {pattern}"
    with caplog.at_level(logging.WARNING, logger="sae_lens"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            silence_known_upstream_warnings()
            train()
            index()
    assert not [w for w in caught if _matches_known(str(w.message))]
    assert not [r for r in caplog.records if "You just passed in a" in r.getMessage()]


def test_training_bar_moves_on_every_step_of_a_short_run(tiny_model, capsys):
    tokens = torch.randint(0, 101, (8, 32), generator=torch.Generator().manual_seed(0))
    train_hook_z_sae(tiny_model, 1, architecture="standard", dataset=tokens, training_tokens=600,
                     train_batch_size_tokens=128, store_batch_size_prompts=4, expansion_factor=2)
    bar = capsys.readouterr().err
    # 5 steps of 128 tokens (the last one passes 600): upstream alone advances every 100
    # steps, so it closes at 0/600
    assert "| 600/600 [" in bar.splitlines()[-1]


def test_multi_sae_run_is_quiet_and_its_bar_moves_on_every_step(tiny_model, capsys, caplog):
    from sae_lens_attn.training import HookZSAESpec, train_hook_z_saes

    tokens = torch.randint(0, 101, (8, 32), generator=torch.Generator().manual_seed(0))
    specs = [HookZSAESpec(0, architecture="standard", expansion_factor=2),
             HookZSAESpec(1, architecture="standard", expansion_factor=2)]

    def train():
        train_hook_z_saes(tiny_model, specs, dataset=tokens, training_tokens=600,
                          train_batch_size_tokens=128, store_batch_size_prompts=4)

    upstream_logger = logging.getLogger("sae_lens")
    kept_filters = list(upstream_logger.filters)
    for log_filter in kept_filters:  # an earlier test may have silenced it already
        upstream_logger.removeFilter(log_filter)
    try:
        with caplog.at_level(logging.WARNING, logger="sae_lens"):
            train()
    finally:
        for log_filter in kept_filters:
            upstream_logger.addFilter(log_filter)
    assert [r for r in caplog.records if r.getMessage().startswith("override_")], "upstream changed"
    caplog.clear()
    capsys.readouterr()
    with caplog.at_level(logging.WARNING, logger="sae_lens"):
        silence_known_upstream_warnings()
        train()
    assert not [r for r in caplog.records if r.getMessage().startswith("override_")]
    assert "| 600/600 [" in capsys.readouterr().err.splitlines()[-1]


def test_loading_the_embedded_model_prints_nothing(capsys):
    from sae_lens_attn.commands._common import load_model

    load_model("embedded").to("cpu", print_details=False)  # as detect and dashboard do
    assert "Moving model to device" not in capsys.readouterr().out


def test_heads_are_labelled_layer_and_head():
    layout = HeadLayout(layer=1, heads=(2, 0), d_head=8, n_model_heads=4)
    assert head_label(1, 2) == "L1H2" and layout.head_labels == ["L1H2", "L1H0"]


def test_detect_lists_detectors_that_found_nothing():
    rows = [FamilyRow("induction", 0, "induction", 1.0), FamilyRow("induction", 1, None, 0.0),
            FamilyRow("logit_lens", 0, None, 0.0), FamilyRow("logit_lens", 1, None, 0.0)]
    table = families_table(rows, ["induction", "logit_lens", "enrichment"])
    assert table == [
        ("induction", "induction", "1", "50.0%", "2"),
        ("logit_lens", "(none found)", "0", "0.0%", "2"),
        ("enrichment", "(none found)", "0", "0.0%", "0"),
    ]


def test_default_output_folders_are_ignored_by_git():
    from sae_lens_attn.cli import build_parser

    ignored = set((ROOT / ".gitignore").read_text().split())
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    defaults = {str(p.get_default("out")) for p in subparsers.values() if p.get_default("out")}
    assert "sae_lens_attn_demo" in defaults
    assert {f"/{folder}/" for folder in defaults} <= ignored
