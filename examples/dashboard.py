"""Render dashboards for a few features of the SAE that `train.py` saved.

    python examples/train.py && python examples/detect.py && python examples/dashboard.py

sae_dashboard's feature page plus our panels (DFA by source position and head, head
attribution, logit lens, detector verdicts from `detect.py`'s `families.json` if
present), as one HTML file that opens offline.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sae_lens import SAE

from sae_lens_attn.dashboard import render_dashboard
from sae_lens_attn.detectors.results import load_family_rows
from sae_lens_attn.models import corpus_dataset, load_embedded_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("example_output"))
    parser.add_argument("--features", type=int, default=5, help="how many live features")
    parser.add_argument("--quick", action="store_true", help="fewer prompts")
    args = parser.parse_args(argv)

    model = load_embedded_model()
    sae = SAE.load_from_disk(args.out / "sae")
    prompts = torch.tensor(
        corpus_dataset(64, n_sequences=16 if args.quick else 128, split="test")["input_ids"]
    )
    families_dir = args.out / "families"
    families = load_family_rows(families_dir) if families_dir.is_dir() else None
    # the first features that fire on the prompts (the SAE takes hook_z [.., heads, d_head])
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts, names_filter=sae.cfg.metadata.hook_name)
        fired = (sae.encode(cache[sae.cfg.metadata.hook_name]) > 0).flatten(0, 1).any(dim=0)
    features = torch.nonzero(fired).flatten()[: args.features].tolist()
    files = render_dashboard(model, sae, prompts, features, args.out / "dashboard",
                             families=families, progress=True)
    print(f"features {features}: open {files.html}")


if __name__ == "__main__":
    main()
