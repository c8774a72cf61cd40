"""Feature-family detectors: induction, logit-lens classes, token-set enrichment, and the
source-signature detectors (current / previous / duplicate token, local / high-level
context) with the taxonomy that gives every live feature one class (`docs/taxonomy.md`).

A detector is any object with `name: str`, `description: str` and
`detect(model, sae, layout, **options) -> list[FamilyRow]` (one row per feature; see
`sae_lens_attn.detectors.base.Detector`). The built-in ones are plugins of kind
"detector" (entry point `detectors = "sae_lens_attn.detectors.plugin"`), found with
`get_plugin_manager().get("detector", name)`. Results are `FamilyRow`s, written and read by
`save_family_rows` / `load_family_rows`.
"""

from sae_lens_attn.detectors.results import (
    FamilyRow,
    family_summary,
    load_family_rows,
    save_family_rows,
)

__all__ = ["FamilyRow", "family_summary", "load_family_rows", "save_family_rows"]
