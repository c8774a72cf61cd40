"""Write a detector plugin, register it, and run it like a built-in.

    python examples/train.py && python examples/plugin.py

A plugin is a module (here: this script) with `@hookimpl` functions returning
`PluginEntry`s. Installed packages declare it with one entry point line,

    [project.entry-points.sae_lens_attn]
    my_plugin = "my_plugin"

and `sae-lens-attn plugins`, `sae-lens-attn detect` and `sae-lens-attn demo` pick it up.
Without installing anything, `get_plugin_manager().register(module)` does the same for
the running process, which is what this script does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sae_lens import SAE

from sae_lens_attn.attribution.heads import sae_head_attribution
from sae_lens_attn.detectors.results import FamilyRow
from sae_lens_attn.models import load_embedded_model
from sae_lens_attn.plugins import PluginEntry, get_plugin_manager, hookimpl
from sae_lens_attn.sources.head_layout import HeadLayout


class SingleHeadDetector:
    """Features whose decoder row puts at least `threshold` of its norm in one head."""

    name = "single_head"
    description = "features living (>= 90% of decoder norm) in one attention head"

    def detect(self, model, sae, layout=None, threshold: float = 0.9, **_options):
        layout = layout or HeadLayout.from_sae(sae, model)
        shares = sae_head_attribution(sae, layout.n_heads)  # [d_sae, n_heads], rows sum to 1
        top_share, top_head = shares.max(dim=1)
        return [
            FamilyRow(self.name, feature,
                      f"head {layout.layer}.{layout.heads[head]}" if share >= threshold else None,
                      float(share), {"summary": f"{share:.0%} of its decoder norm in one head"})
            for feature, (share, head) in enumerate(zip(top_share.tolist(), top_head.tolist(), strict=True))
        ]


@hookimpl
def sae_lens_attn_detectors() -> list[PluginEntry]:
    return [PluginEntry(SingleHeadDetector.name, SingleHeadDetector.description,
                        load=SingleHeadDetector)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("example_output"))
    parser.add_argument("--quick", action="store_true", help="accepted for symmetry; already fast")
    args = parser.parse_args(argv)

    manager = get_plugin_manager()
    manager.register(sys.modules[__name__], name="example_plugin")
    print("detectors:", ", ".join(loaded.entry.name for loaded in manager.entries("detector")))

    model = load_embedded_model()
    sae = SAE.load_from_disk(args.out / "sae")
    rows = manager.get("detector", "single_head").detect(model, sae)
    members = [row for row in rows if row.family is not None]
    print(f"{len(members)} of {len(rows)} features live in a single head")


if __name__ == "__main__":
    main()
