"""Circuit attribution of one feature: which upstream components feed it (value and
query/key sides) and whether it acts on the logits directly or through later layers.

`feature.feature_circuit` runs the parts: `context` (one prompt's cache and the feature's
input), `components` and `split` (residual components, split by upstream SAEs), `encoder`
and `upstream` (value side), `query_key`, `downstream`.
"""

from sae_lens_attn.attribution.circuit.feature import (
    FeatureCircuit,
    circuit_from_context,
    circuit_summary,
    feature_circuit,
)

__all__ = ["FeatureCircuit", "circuit_from_context", "circuit_summary", "feature_circuit"]
