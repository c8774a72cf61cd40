"""Moved: `feature_activity` and `FeatureActivity` live in `sae_lens_attn.detectors.activity`
(below both the demo and the atlas, which use them); this path keeps old imports working."""

from sae_lens_attn.detectors.activity import FeatureActivity, feature_activity

__all__ = ["FeatureActivity", "feature_activity"]
