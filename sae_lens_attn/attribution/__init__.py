"""Attribution math on hook_z SAEs: pure tensor functions, no I/O, any device.

- `dfa`: direct feature attribution by source position and head (exact, with bias terms).
- `heads`: per-head decoder / encoder norm fractions of each feature.
- `logit_lens`: feature output directions, logit weight statistics, top tokens.
- `circuit/`: circuit attribution of one feature (upstream components on the value and
  query/key sides, direct vs total downstream effect).
"""

from sae_lens_attn.attribution.circuit.components import ComponentSplit
from sae_lens_attn.attribution.circuit.context import CircuitContext, circuit_context
from sae_lens_attn.attribution.circuit.downstream import DownstreamEffect, downstream_effect
from sae_lens_attn.attribution.circuit.feature import FeatureCircuit, feature_circuit
from sae_lens_attn.attribution.circuit.query_key import (
    QueryKeyAttribution,
    query_key_attribution,
)
from sae_lens_attn.attribution.circuit.split import split_with_sae
from sae_lens_attn.attribution.circuit.upstream import (
    ValueSideAttribution,
    value_side_attribution,
)
from sae_lens_attn.attribution.dfa import (
    FeatureDFA,
    SiteDFA,
    dfa_by_source,
    dfa_by_source_and_head,
    dfa_hook_names,
    feature_dfa,
    site_dfa,
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
    "CircuitContext",
    "ComponentSplit",
    "DownstreamEffect",
    "FeatureCircuit",
    "FeatureDFA",
    "LogitStats",
    "QueryKeyAttribution",
    "SiteDFA",
    "ValueSideAttribution",
    "circuit_context",
    "decoder_head_attribution",
    "dfa_by_source",
    "dfa_by_source_and_head",
    "dfa_hook_names",
    "downstream_effect",
    "encoder_head_attribution",
    "feature_circuit",
    "feature_dfa",
    "feature_output_directions",
    "logit_weight_stats",
    "query_key_attribution",
    "sae_head_attribution",
    "sae_output_directions",
    "site_dfa",
    "split_with_sae",
    "top_logit_tokens",
    "unembed_through_final_ln",
    "value_side_attribution",
]
