"""Built-in detectors as plugins of kind "detector" (entry point `detectors`).

Cheap to import: each detector module is imported only when its entry is loaded.
"""

from __future__ import annotations

from sae_lens_attn.plugins import PluginEntry, hookimpl


def _induction():
    from sae_lens_attn.detectors.induction import InductionDetector

    return InductionDetector()


def _logit_lens():
    from sae_lens_attn.detectors.logit_lens_classes import LogitLensClassDetector

    return LogitLensClassDetector()


def _enrichment():
    from sae_lens_attn.detectors.enrichment import EnrichmentDetector

    return EnrichmentDetector()


@hookimpl
def sae_lens_attn_detectors() -> list[PluginEntry]:
    return [
        PluginEntry("induction", '"<token> is next by induction" features (Kissane et al.)', _induction),
        PluginEntry("logit_lens", "logit-lens classes: prediction, suppression, partition (Bloom)", _logit_lens),
        PluginEntry("enrichment", "token-set enrichment of logit weights, BH-corrected (SAELens tsea)", _enrichment),
    ]
