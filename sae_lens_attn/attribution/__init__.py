"""Attribution math on hook_z SAEs: pure tensor functions, no I/O, any device.

- `dfa`: direct feature attribution by source position and head (exact, with bias terms).
- `heads`: per-head decoder / encoder norm fractions of each feature.
"""

from sae_lens_attn.attribution.dfa import (
    FeatureDFA,
    dfa_by_source,
    dfa_by_source_and_head,
    dfa_hook_names,
    feature_dfa,
)
from sae_lens_attn.attribution.heads import (
    decoder_head_attribution,
    encoder_head_attribution,
    sae_head_attribution,
)

__all__ = [
    "FeatureDFA",
    "decoder_head_attribution",
    "dfa_by_source",
    "dfa_by_source_and_head",
    "dfa_hook_names",
    "encoder_head_attribution",
    "feature_dfa",
    "sae_head_attribution",
]
