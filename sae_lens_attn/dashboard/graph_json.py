"""An attribution graph as circuit-tracer's graph JSON (`circuit_tracer/frontend/
graph_models.py`: `metadata`, `qParams`, `nodes`, `links`), the file its frontend and
Neuronpedia's graph viewer read, with our own fields added to each node and link.

circuit-tracer has no attention-SAE node: attention features are written as its feature
nodes (`"cross layer transcoder"`, id `{layer}_{feature}_{position}`) and say their head
in `clerp` (`L1H2 #299`) and in `head`; an attention SAE's error is an error node
(`"attention reconstruction error"`), an MLP output its `"mlp reconstruction error"`, and
so is the error node of an MLP SAE or transcoder. Transcoder features are circuit-tracer's
own kind of feature node (`"cross layer transcoder"`, `TC L1 #12`), and so are MLP SAE
features (`MLP L1 #12`, leaves); their ids start with `T` and `M` and their `feature`
numbers are negative (`-3 - cantor(layer, index)`), so that the viewer's key
`{layer}_{feature}_{ctx_idx}` does not meet an attention feature's at the same layer and
index. Links into attention features carry `heads`: each head's term (they sum to
`weight`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from sae_lens_attn.sources.head_layout import head_label

if TYPE_CHECKING:
    from sae_lens_attn.attribution.graph import AttributionGraph

Decode = Callable[[int], str]
SCHEMA_VERSION = 1


def _cantor(x: int, y: int) -> int:
    """circuit-tracer's feature number for (layer, index): the Cantor pairing."""
    return (x + y) * (x + y + 1) // 2 + y


def cumulative_influence(graph: AttributionGraph) -> torch.Tensor:
    """`[n_nodes]`: the share of total influence held by nodes at least as influential
    (circuit-tracer's `cumulative_scores`, shown as `influence`); 0 for the root, where
    influence starts. circuit-tracer's viewer hides every node above its pruning slider
    but embeddings and logits, so a feature root written as 1.0 (it has no influence of
    its own) would not be drawn."""
    scores = graph.node_influence
    ordered, order = scores.sort(descending=True)
    cumulative = torch.zeros_like(scores)
    cumulative[order] = ordered.cumsum(0) / ordered.sum().clamp(min=1e-30)
    cumulative[graph.root] = 0.0
    return cumulative


def node_record(graph: AttributionGraph, node: int, decode: Decode, influence: float) -> dict:
    """One node as circuit-tracer's `Node` fields plus ours (`kind`, `head`,
    `head_share`, `token`, `value`, `bias`)."""
    nodes = graph.nodes
    kind = graph.kind(node)
    layer, position = int(nodes.layer[node]), int(nodes.position[node])
    index = int(nodes.index[node])
    token = decode(int(graph.tokens[position]))
    n_layers = int(graph.nodes.constant.shape[0] - 1)
    record: dict[str, Any] = {
        "ctx_idx": position,
        "influence": influence,
        "activation": float(nodes.activation[node]),
        "kind": kind,
        "token": token,
        "value": graph.value.get(node),
        "bias": graph.bias.get(node),
    }
    if kind == "feature":
        head = int(nodes.head[node])
        record.update(
            node_id=f"{layer}_{index}_{position}",
            jsNodeId=f"{layer}_{index}-0",
            feature=_cantor(layer, index),
            layer=str(layer),
            feature_type="cross layer transcoder",
            clerp=f"{head_label(layer, head)} #{index}",
            head=head,
            head_share=float(nodes.head_share[node]),
            sae_feature=index,
        )
    elif kind in ("mlp_feature", "transcoder"):
        prefix, label = ("T", "TC") if kind == "transcoder" else ("M", "MLP")
        record.update(
            node_id=f"{prefix}{layer}_{index}_{position}",
            jsNodeId=f"{prefix}{layer}_{index}-0",
            feature=-3 - _cantor(layer, index),
            layer=str(layer),
            feature_type="cross layer transcoder",
            clerp=f"{label} L{layer} #{index}",
            sae_feature=index,
        )
    elif kind in ("attn_error", "mlp", "mlp_error"):
        name = "attention" if kind == "attn_error" else "mlp"
        # circuit-tracer names its error node `0_{layer}_{pos}`, which is also the id of
        # feature number `layer` of layer 0 at that position: ours start with a letter
        # (a layer has an mlp or an mlp_error node per position, not both)
        prefix = "A" if kind == "attn_error" else "R"
        record.update(
            node_id=f"{prefix}_{layer}_{position}",
            jsNodeId=f"{prefix}{layer}_{position}-0",
            # circuit-tracer's error nodes are -1; its viewer keys nodes by
            # `{layer}_{feature}_{ctx_idx}`, so our second error kind needs its own
            feature=-2 if kind == "attn_error" else -1,
            layer=str(layer),
            feature_type=f"{name} reconstruction error",
            clerp=f"Err: {name} L{layer} {token!r}",
        )
    elif kind in ("embedding", "position"):
        prefix = "E" if kind == "embedding" else "P"
        record.update(
            node_id=f"{prefix}_{index}_{position}",
            jsNodeId=f"{prefix}_{index}-{position}",
            feature=position,
            layer="E",
            feature_type="embedding",
            clerp=f"Emb: {token!r}" if kind == "embedding" else f"Pos: {position}",
        )
    else:  # the logit root
        record.update(
            node_id=f"{n_layers + 1}_{index}_{position}",
            jsNodeId=f"L_{index}-{position}",
            feature=index,
            layer=str(n_layers + 1),
            feature_type="logit",
            is_target_logit=True,
            token_prob=float(graph.root_probability),
            clerp=f'Output "{decode(index)}" (p={graph.root_probability:.3f})',
            logit_token=decode(index),
        )
    record["reverse_ctx_idx"] = 0
    return record


def graph_json(
    graph: AttributionGraph, decode: Decode, prompt: str, slug: str, scan: str
) -> dict[str, Any]:
    """The pruned graph (`graph.kept`, `graph.edges`) as circuit-tracer's graph JSON, with
    `metadata.info` holding the root, the scores and the closure."""
    influence = cumulative_influence(graph)
    kept = graph.kept.nonzero().flatten().tolist()
    nodes = {n: node_record(graph, n, decode, float(influence[n])) for n in kept}
    links = []
    for edge in graph.edges:
        link: dict[str, Any] = {
            "source": nodes[edge.source]["node_id"],
            "target": nodes[edge.target]["node_id"],
            "weight": edge.weight,
        }
        if edge.heads:
            link["heads"] = [
                {
                    "head": head,
                    "label": head_label(int(graph.nodes.layer[edge.target]), head),
                    "weight": term,
                }
                for head, term in edge.heads
            ]
        links.append(link)
    target = graph.target
    info = {
        "root": nodes[graph.root]["node_id"],
        "root_kind": "logit" if target.is_logit else "feature",
        "root_value": graph.root_value,
        "root_activation": graph.root_activation,
        "closure_max_abs": graph.closure_max_abs,
        "replacement_score": graph.scores.replacement,
        "completeness_score": graph.scores.completeness,
        "pruned_replacement_score": graph.pruned_scores.replacement,
        "pruned_completeness_score": graph.pruned_scores.completeness,
        "edge_threshold": graph.pruning.edge_threshold,
        "max_nodes": graph.pruning.max_nodes,
        "missing_layers": list(graph.missing_layers),
        "mlp_sae_layers": list(graph.mlp_sae_layers),
        "transcoder_layers": list(graph.transcoder_layers),
        "n_nodes_total": graph.n_nodes,
    }
    return {
        "metadata": {
            "slug": slug,
            "scan": scan,
            "transcoder_list": [],
            "prompt_tokens": [decode(int(t)) for t in graph.tokens],
            "prompt": prompt,
            "node_threshold": graph.pruning.node_threshold,
            "schema_version": SCHEMA_VERSION,
            "info": info,
        },
        "qParams": {
            "pinnedIds": [],
            "supernodes": [],
            "linkType": "both",
            "clickedId": nodes[graph.root]["node_id"],
            "sg_pos": "",
        },
        "nodes": list(nodes.values()),
        "links": links,
    }
