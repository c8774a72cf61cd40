"""Attribution graphs: recursive direct feature attribution through frozen attention.

`build.build_graph` runs the parts: `nodes` (what every feature, error, MLP and embedding
node writes), `mlp` (which MLP SAE or transcoder is for which layer), `reads` (how a
feature, transcoder feature or logit reads them through frozen patterns and LayerNorm
scales), `influence` (circuit-tracer's influence, pruning and scores).
"""

from sae_lens_attn.attribution.graph.build import (
    AttributionGraph,
    Edge,
    GraphTarget,
    Pruning,
    build_graph,
)

__all__ = ["AttributionGraph", "Edge", "GraphTarget", "Pruning", "build_graph"]
