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


def _source(name: str):
    def load():
        from sae_lens_attn.detectors import source_detectors

        classes = {
            "current_token": source_detectors.CurrentTokenDetector,
            "previous_token": source_detectors.PreviousTokenDetector,
            "duplicate_token": source_detectors.DuplicateTokenDetector,
            "local_context": source_detectors.LocalContextDetector,
            "high_level_context": source_detectors.HighLevelContextDetector,
        }
        return classes[name]()

    return load


def _code_region():
    from sae_lens_attn.detectors.code_region import CodeRegionDetector

    return CodeRegionDetector()


def _taxonomy():
    from sae_lens_attn.detectors.taxonomy import TaxonomyDetector

    return TaxonomyDetector()


@hookimpl
def sae_lens_attn_detectors() -> list[PluginEntry]:
    return [
        PluginEntry("induction", '"<token> is next by induction" features (Kissane et al.)', _induction),
        PluginEntry("logit_lens", "logit-lens classes: prediction, suppression, partition (Bloom)", _logit_lens),
        PluginEntry("enrichment", "token-set enrichment of logit weights, BH-corrected (SAELens tsea)", _enrichment),
        PluginEntry("current_token", "current-token features: DFA at the destination, token-specific",
                    _source("current_token")),
        PluginEntry("previous_token", "previous-token features: DFA at q-1, token-specific", _source("previous_token")),
        PluginEntry("duplicate_token", "duplicate-token features: DFA at an earlier copy of the current token",
                    _source("duplicate_token")),
        PluginEntry("local_context", "local-context features: runs after a trigger token, DFA on the trigger",
                    _source("local_context")),
        PluginEntry("high_level_context", "high-level context features: fire across a document, diffuse DFA",
                    _source("high_level_context")),
        PluginEntry("code_region", "code-region features: docstring, comment, string, decorator, class body, "
                    "beyond the local tokens (controls: token-only predictor, shuffled regions)", _code_region),
        PluginEntry("taxonomy", "one source-signature class per live feature, with the per-head table (runs last)",
                    _taxonomy),
    ]
