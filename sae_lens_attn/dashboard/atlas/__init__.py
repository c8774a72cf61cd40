"""The atlas: every live feature of an SAE as a static site that opens from `file://`.

`build_atlas(model, sae, tokens, "site")` writes `site/index.html` (one sortable,
filterable row per feature, with summary plots) and `site/feature.html#N` (sae_dashboard's
view and every dashboard panel for feature N, loaded on demand from `site/data/`).
Generation streams shard by shard and resumes (`resume=True`); see `build` and `site`.
"""

from sae_lens_attn.dashboard.atlas.build import AtlasConfig, AtlasFiles, build_atlas

__all__ = ["AtlasConfig", "AtlasFiles", "build_atlas"]
