"""Attribution math on hook_z SAEs: pure tensor functions, no I/O, any device.

- `dfa`: direct feature attribution by source position and head (exact, with bias terms).
- `heads`: per-head decoder / encoder norm fractions of each feature.
- `logit_lens`: feature output directions, logit weight statistics, top tokens.
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
from sae_lens_attn.attribution.logit_lens import (
    LogitStats,
    feature_output_directions,
    logit_weight_stats,
    sae_output_directions,
    top_logit_tokens,
    unembed_through_final_ln,
)

__all__ = [
    "FeatureDFA",
    "LogitStats",
    "decoder_head_attribution",
    "dfa_by_source",
    "dfa_by_source_and_head",
    "dfa_hook_names",
    "encoder_head_attribution",
    "feature_dfa",
    "feature_output_directions",
    "logit_weight_stats",
    "sae_head_attribution",
    "sae_output_directions",
    "top_logit_tokens",
    "unembed_through_final_ln",
]
