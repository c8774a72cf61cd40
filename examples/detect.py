"""Find feature families in the SAE that `train.py` saved, with every detector plugin.

    python examples/train.py && python examples/detect.py [--quick]

Each detector ("induction", "logit_lens", "enrichment", and any third-party one) comes
from the plugin manager and returns one `FamilyRow` per feature; the rows are saved as
`families.csv` / `families.json` and summarised per family.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sae_lens import SAE

from sae_lens_attn.detectors.results import family_summary, save_family_rows
from sae_lens_attn.models import corpus_dataset, load_embedded_model
from sae_lens_attn.plugins import get_plugin_manager
from sae_lens_attn.sources.head_layout import HeadLayout


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("example_output"))
    parser.add_argument("--quick", action="store_true", help="fewer test prompts")
    args = parser.parse_args(argv)

    model = load_embedded_model()
    sae = SAE.load_from_disk(args.out / "sae")
    layout = HeadLayout.from_sae(sae, model)
    held_out = corpus_dataset(64, n_sequences=32 if args.quick else 256, split="test")
    tokens = torch.tensor(held_out["input_ids"])  # [n_prompts, 64]
    manager = get_plugin_manager()
    rows = []
    for loaded in manager.entries("detector"):
        detector = loaded.entry.load()
        rows += detector.detect(model, sae, layout, tokens=tokens,
                                n_prompts=2 if args.quick else 8)
    csv_path, _ = save_family_rows(rows, args.out / "families")
    for detector, summary in family_summary(rows).items():
        families = ", ".join(f"{family}: {f['count']} ({f['share_of_live']:.1%})"
                             for family, f in summary["families"].items()) or "no members"
        print(f"{detector:12s} {summary['live']} live features; {families}")
    print(f"rows written to {csv_path}")


if __name__ == "__main__":
    main()
