"""`build_graph`: recursive direct feature attribution from one attention SAE feature (or
one logit) back to the tokens, as an attribution graph.

The attention patterns and every LayerNorm scale are frozen at the prompt, so each
target's pre-activation (or logit) is linear in what the nodes below wrote (`reads`).
Starting at the root, every attention or transcoder feature node reached gets its incoming
edges, down to `depth` steps or until only leaves (tokens, error, MLP and MLP SAE feature
nodes) are left. Influence, pruning and the replacement and completeness scores follow
circuit-tracer (`influence`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from sae_lens_attn.attribution.graph.influence import (
    RowBlock,
    Scores,
    dense_influence,
    find_threshold,
    graph_scores,
)
from sae_lens_attn.attribution.graph.mlp import check_linear_input, check_mlp_saes, mlp_features
from sae_lens_attn.attribution.graph.nodes import (
    ERROR_KINDS,
    FEATURE_KINDS,
    INPUT_KINDS,
    KINDS,
    LayerFeatures,
    MlpFeatures,
    NodeSet,
    build_nodes,
    layer_features,
)
from sae_lens_attn.attribution.graph.reads import AttentionReads, TranscoderReads, logit_rows
from sae_lens_attn.sources.model_inputs import check_token_rows

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer


TARGETS_PER_CHUNK = 256  # feature targets read at once (memory: T x n_heads x d_model)


@dataclass(frozen=True)
class GraphTarget:
    """The root: feature `feature` of layer `layer`'s SAE at `position`, or, when `token`
    is set, the logit of `token` at `position` (`layer` is then `n_layers`)."""

    layer: int
    position: int
    feature: int | None = None
    token: int | None = None

    @property
    def is_logit(self) -> bool:
        return self.token is not None


@dataclass(frozen=True)
class Pruning:
    """Thresholds as circuit-tracer's `prune_graph` (fractions of total influence kept)
    and a cap on feature and error nodes kept (tokens and the root are always kept)."""

    node_threshold: float = 0.8
    edge_threshold: float = 0.98
    max_nodes: int = 500


@dataclass(frozen=True)
class Edge:
    """`source -> target` (node indices) of weight `weight`; `heads` the
    `(head, term)` of each head the edge went through (terms sum to `weight`); empty for
    edges into a logit."""

    source: int
    target: int
    weight: float
    heads: tuple[tuple[int, float], ...] = ()


@dataclass
class AttributionGraph:
    """An attribution graph of one prompt `tokens [pos]`.

    `nodes`: every node up to the root's layer and position, then the root itself (index
    `root`; for a feature root a copy of its feature node). `blocks`: incoming edges of
    every expanded node, root first, then down the layers. `bias`, `value`: per expanded
    node. `depth [n_nodes]` steps from the root (-1: not reached), `node_influence`,
    `scores` (full graph) and after pruning: `kept [n_nodes]`, `edges`, `pruned_scores`.
    `closure_max_abs`: the largest |value - edges - bias| over expanded nodes.
    """

    tokens: torch.Tensor
    target: GraphTarget
    nodes: NodeSet
    root: int
    root_value: float
    root_activation: float
    blocks: list[RowBlock]
    bias: dict[int, float]
    value: dict[int, float]
    depth: torch.Tensor
    closure_max_abs: float
    node_influence: torch.Tensor
    scores: Scores
    pruning: Pruning
    kept: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    edges: list[Edge] = field(default_factory=list)
    pruned_scores: Scores | None = None
    missing_layers: tuple[int, ...] = ()
    root_probability: float = 0.0
    mlp_sae_layers: tuple[int, ...] = ()
    transcoder_layers: tuple[int, ...] = ()

    @property
    def n_nodes(self) -> int:
        return self.nodes.n_nodes

    def kind(self, node: int) -> str:
        return KINDS[int(self.nodes.kind[node])]

    def incoming(self, node: int) -> torch.Tensor | None:
        """The full row of `node` (`[n_nodes]`, zero where no edge), or None for a leaf."""
        for block in self.blocks:
            hit = (block.targets == node).nonzero()
            if len(hit):
                row = torch.zeros(self.n_nodes)
                row[block.columns] = block.rows[int(hit[0])]
                return row
        return None


def check_one_model(saes: Sequence[SAE]) -> None:
    """A ValueError when `saes` (attention SAEs, MLP SAEs, transcoders) name different
    models."""
    model_names = {sae.cfg.metadata.model_name for sae in saes} - {None, ""}
    if len(model_names) > 1:
        raise ValueError(
            f"the SAEs come from different models: {sorted(model_names)}; give SAEs of one model"
        )


def check_saes(model: HookedTransformer, saes: Sequence[SAE]) -> dict[int, SAE]:
    """One hook_z SAE per layer, each on this model's shapes; `{layer: sae}`. A ValueError
    says what is wrong (not hook_z, two for a layer, another model, run-time
    normalisation)."""
    from sae_lens_attn.sources.head_layout import HeadLayout, layer_of_hook_z

    by_layer: dict[int, SAE] = {}
    check_one_model(saes)
    for sae in saes:
        hook = sae.cfg.metadata.hook_name or ""
        try:
            layer = layer_of_hook_z(hook, model.cfg.n_layers)
        except ValueError:
            raise ValueError(
                f"SAE on {hook!r} is not an attention hook_z SAE; a graph needs SAEs on "
                f"blocks.L.attn.hook_z (L = 0..{model.cfg.n_layers - 1})"
            ) from None
        if layer in by_layer:
            raise ValueError(
                f"two SAEs for layer {layer} (blocks.{layer}.attn.hook_z); give one "
                "SAE per attention layer"
            )
        check_linear_input(sae, f"layer-{layer} SAE")
        HeadLayout.from_sae(sae, model).check_against(model, hook)
        by_layer[layer] = sae
    return by_layer


def build_graph(
    model: HookedTransformer,
    saes: Sequence[SAE],
    tokens: torch.Tensor,
    feature: tuple[int, int] | None = None,
    position: int | None = None,
    logit_token: int | None = None,
    depth: int | None = None,
    pruning: Pruning = Pruning(),
    mlp_saes: Sequence[SAE] = (),
    transcoders: Sequence[SAE] = (),
) -> AttributionGraph:
    """The attribution graph of `feature = (layer, index)` at `position` (default: where it
    is most active) or of the logit of `logit_token` at `position` (default: the last), on
    one prompt `tokens [pos]`. `saes`: hook_z SAEs, at most one per layer; a layer without
    one is an error node per position (`AttributionGraph.missing_layers`). `mlp_saes` (on
    `hook_mlp_out`) and `transcoders` (SAELens transcoders reading `ln2.hook_normalized` or
    `hook_resid_mid`): at most one per MLP layer; their features replace that layer's MLP
    output nodes, plus one MLP error node per position."""
    tokens = tokens.reshape(-1)
    check_token_rows(tokens, model, "prompt")
    if (feature is None) == (logit_token is None):
        raise ValueError("give exactly one root: feature=(layer, index) or logit_token")
    check_one_model([*saes, *mlp_saes, *transcoders])
    by_layer = check_saes(model, saes)
    mlp_by_layer = check_mlp_saes(model, mlp_saes, transcoders)
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            tokens[None], names_filter=_read_hooks(mlp_by_layer.values())
        )
    cache = cache.remove_batch_dim()
    feats = {layer: layer_features(sae, model, cache) for layer, sae in by_layer.items()}
    mlp = {
        layer: mlp_features(sae, layer, transcoder, cache)
        for layer, (sae, transcoder) in mlp_by_layer.items()
    }
    target = _resolve_target(model, feats, tokens, feature, position, logit_token)
    logits = logits[0, target.position].clone()  # [d_vocab]: the rest is not read
    nodes = build_nodes(model, cache, tokens, feats, target.position, mlp)
    if target.is_logit:
        root = nodes.n_nodes
        root_activation = root_value = logits[target.token].item()
        probability = logits.softmax(-1)[target.token].item()
        nodes = _with_root(
            nodes,
            KINDS.index("logit"),
            model.cfg.n_layers,
            target.position,
            target.token,
            root_value,
        )
        root_rows = logit_rows(model, cache, nodes, target.position, target.token, root_value)
        root_rows.rows[0, root] = 0.0
    else:
        layer_feats = feats[target.layer]
        root_activation = layer_feats.acts[target.position, target.feature].item()
        reads = AttentionReads(
            model,
            cache,
            layer_feats,
            torch.tensor([target.position]),
            torch.tensor([target.feature]),
        )
        root = nodes.n_nodes
        root_rows = reads.rows(nodes, nodes.constant[target.layer])
        root_value = root_rows.value.item()
        nodes = _with_root(
            nodes,
            KINDS.index("feature"),
            target.layer,
            target.position,
            target.feature,
            root_activation,
        )
        probability = 0.0
    graph = _expand(model, cache, feats, mlp, nodes, root, root_rows, target, depth)
    graph.update(
        tokens=tokens.cpu(),
        target=target,
        root_value=root_value,
        root_activation=root_activation,
        pruning=pruning,
        missing_layers=tuple(sorted(set(range(model.cfg.n_layers)) - set(feats))),
        root_probability=probability,
        mlp_sae_layers=tuple(sorted(k for k, v in mlp.items() if not v.transcoder)),
        transcoder_layers=tuple(sorted(k for k, v in mlp.items() if v.transcoder)),
    )
    result = AttributionGraph(**graph)
    prune(result, pruning, model, cache, feats)
    return result


_READ_HOOKS = (
    "hook_embed",
    "hook_pos_embed",
    "attn.hook_z",
    "attn.hook_pattern",
    "hook_attn_out",
    "hook_mlp_out",
    "hook_scale",
)


def _read_hooks(mlp_saes: Iterable[tuple[SAE, bool]]) -> Callable[[str], bool]:
    """The cache's filter: only the activations a graph reads (the writes, hook_z, the
    frozen patterns and LayerNorm scales, the MLP SAEs' and transcoders' inputs), which at
    gpt2-small's shape is a fraction of the full cache."""
    inputs = {sae.cfg.metadata.hook_name for sae, _ in mlp_saes}
    return lambda name: name.endswith(_READ_HOOKS) or name in inputs


def _resolve_target(
    model: HookedTransformer,
    feats: Mapping[int, LayerFeatures],
    tokens: torch.Tensor,
    feature: tuple[int, int] | None,
    position: int | None,
    logit_token: int | None,
) -> GraphTarget:
    n_pos = tokens.shape[0]
    if position is not None and not 0 <= position < n_pos:
        raise ValueError(
            f"position {position} is out of range; the prompt has positions 0..{n_pos - 1}"
        )
    if logit_token is not None:
        if not 0 <= logit_token < model.cfg.d_vocab:
            raise ValueError(
                f"logit token {logit_token} is out of range (0..{model.cfg.d_vocab - 1})"
            )
        return GraphTarget(
            model.cfg.n_layers, n_pos - 1 if position is None else position, token=logit_token
        )
    layer, index = feature
    if layer not in feats:
        raise ValueError(f"no SAE for layer {layer}; SAEs were given for layers {sorted(feats)}")
    d_sae = feats[layer].acts.shape[1]
    if not 0 <= index < d_sae:
        raise ValueError(
            f"feature {index} is out of range; the layer-{layer} SAE has features 0..{d_sae - 1}"
        )
    acts = feats[layer].acts[:, index]
    active = (acts > 0).nonzero().flatten().tolist()
    if position is None:
        if not active:
            raise ValueError(f"feature {layer}:{index} is active at no position of the prompt")
        position = int(acts.argmax())
    elif position not in active:
        where = ", ".join(map(str, active)) if active else "none"
        raise ValueError(
            f"feature {layer}:{index} is not active at position {position}; it is "
            f"active at positions: {where}"
        )
    return GraphTarget(layer, position, feature=index)


def _with_root(
    nodes: NodeSet, kind: int, layer: int, position: int, index: int, activation: float
) -> NodeSet:
    """`nodes` with the root appended (its write is not needed: nothing reads it); a
    feature root takes the head of its own node."""
    one = torch.ones(1, dtype=torch.long)
    same = (nodes.kind == kind) & (nodes.layer == layer) & (nodes.position == position)
    same = (same & (nodes.index == index)).nonzero().flatten()
    head = nodes.head[same[:1]] if len(same) else -one
    share = nodes.head_share[same[:1]] if len(same) else torch.zeros(1)
    return replace(
        nodes,
        kind=torch.cat([nodes.kind, one * kind]),
        layer=torch.cat([nodes.layer, one * layer]),
        position=torch.cat([nodes.position, one * position]),
        index=torch.cat([nodes.index, one * index]),
        activation=torch.cat([nodes.activation, torch.tensor([float(activation)])]),
        head=torch.cat([nodes.head, head]),
        head_share=torch.cat([nodes.head_share, share]),
        writes=torch.cat([nodes.writes, torch.zeros(1, nodes.writes.shape[1])]),
    )


def _expand(
    model,
    cache,
    feats: Mapping[int, LayerFeatures],
    mlp: Mapping[int, MlpFeatures],
    nodes: NodeSet,
    root: int,
    root_rows,
    target: GraphTarget,
    depth: int | None,
) -> dict:
    """Give the root and then, layer by layer downwards (each layer's transcoder, then its
    attention SAE), every reached feature node its incoming edges; returns the fields of
    `AttributionGraph` it computes."""
    n_nodes = nodes.n_nodes
    max_depth = depth if depth is not None else model.cfg.n_layers + 1
    steps = torch.full((n_nodes,), -1, dtype=torch.long)
    steps[root] = 0
    width = root_rows.rows.shape[1]
    blocks = [RowBlock(torch.tensor([root]), torch.arange(width), root_rows.rows)]
    bias = {root: root_rows.bias.item()}
    value = {root: root_rows.value.item()}
    closure = [root_rows.closure.abs().max().item()]
    _reach(steps, blocks[0])
    stages = []
    for layer in range(target.layer - 1, -1, -1):
        if layer in mlp and mlp[layer].transcoder:
            stages.append((layer, "transcoder"))
        if layer in feats:
            stages.append((layer, "feature"))
    for layer, kind in stages:
        start, end = nodes.prefix(layer), nodes.prefix(layer + 1)
        span = torch.arange(start, end)
        chosen = span[
            (nodes.kind[span] == KINDS.index(kind)) & (steps[span] >= 0) & (steps[span] < max_depth)
        ]
        # in chunks of targets, which bounds the per-target read vectors and dense rows
        for chunk in chosen.split(TARGETS_PER_CHUNK):
            positions, indices = nodes.position[chunk], nodes.index[chunk]
            if kind == "transcoder":
                rows = TranscoderReads(model, cache, mlp[layer], positions, indices).rows(nodes)
                sources = "at"
            else:
                reads = AttentionReads(model, cache, feats[layer], positions, indices)
                rows = reads.rows(nodes, nodes.constant[layer])
                sources = "before" if reads.destinations is not None else "all"
                del reads
            closure.append(rows.closure.abs().max().item())
            bias.update(zip(chunk.tolist(), rows.bias.tolist(), strict=True))
            value.update(zip(chunk.tolist(), rows.value.tolist(), strict=True))
            for block in _row_blocks(chunk, nodes, rows.rows, sources):
                blocks.append(block)
                _reach(steps, block)
            del rows
    scores, node_influence = graph_scores(
        blocks,
        n_nodes,
        root,
        nodes.of_kind(*INPUT_KINDS),
        nodes.of_kind(*ERROR_KINDS),
        nodes.of_kind("mlp_feature"),
    )
    return dict(
        nodes=nodes,
        root=root,
        blocks=blocks,
        bias=bias,
        value=value,
        depth=steps,
        closure_max_abs=max(closure),
        node_influence=node_influence,
        scores=scores,
    )


def _row_blocks(
    targets: torch.Tensor, nodes: NodeSet, rows: torch.Tensor, sources: str
) -> list[RowBlock]:
    """`rows [T, P]` (over the first P nodes) as blocks. `sources` says which columns the
    reads can have filled: `"before"` (causal attention) and `"at"` (a transcoder) split
    the rows by target position and keep the sources at or before it (at it); the rest
    are zeros by construction, so this halves what is stored (or more). `"all"`: one
    block of whole rows."""
    if sources == "all":
        return [RowBlock(targets, torch.arange(rows.shape[1]), rows)]
    source_pos = nodes.position[: rows.shape[1]]
    positions = nodes.position[targets]
    blocks = []
    for q in positions.unique().tolist():
        picked = (positions == q).nonzero().flatten()
        columns = ((source_pos == q) if sources == "at" else (source_pos <= q)).nonzero()
        columns = columns.flatten()
        part = rows[picked[:, None], columns[None]]  # one gather, one new tensor
        blocks.append(RowBlock(targets[picked], columns, part))
    return blocks


def _reach(steps: torch.Tensor, block: RowBlock, chunk: int = 256) -> None:
    """Mark the sources of `block`'s non-zero edges one step further than their target
    (`chunk` rows at a time, to bound the temporary memory)."""
    unreached = torch.iinfo(steps.dtype).max
    nearest = torch.full((len(block.columns),), unreached, dtype=steps.dtype)
    for start in range(0, len(block.targets), chunk):
        step = steps[block.targets[start : start + chunk]][:, None] + 1
        hit = block.rows[start : start + chunk] != 0
        nearest = torch.minimum(nearest, torch.where(hit, step, unreached).min(0).values)
    current = steps[block.columns]
    better = (nearest < unreached) & ((current < 0) | (current > nearest))
    steps[block.columns[better]] = nearest[better]


def prune(graph: AttributionGraph, pruning: Pruning, model, cache, feats) -> None:
    """Keep nodes by influence (`node_threshold`, then the `max_nodes` most influential),
    then edges by edge influence (`edge_threshold`), as circuit-tracer's `prune_graph`;
    sets `kept`, `edges` (with head terms) and `pruned_scores` (pruned features counted
    as error nodes, as leaves)."""
    nodes, root = graph.nodes, graph.root
    inputs = nodes.of_kind(*INPUT_KINDS)
    inputs[root] = False
    scores = graph.node_influence
    kept = scores >= find_threshold(scores, pruning.node_threshold)
    kept &= scores > 0
    candidates = (kept & ~inputs).nonzero().flatten()
    candidates = candidates[candidates != root]
    if len(candidates) > pruning.max_nodes:
        order = scores[candidates].argsort(descending=True)
        kept[candidates[order[pruning.max_nodes :]]] = False
    kept |= inputs
    kept[root] = True
    index = kept.nonzero().flatten()
    dense = _dense(graph, index)
    edge_mask = _prune_edges(dense, index, root, pruning.edge_threshold, graph)
    local_kept = edge_mask.any(0) | edge_mask.any(1)
    local_kept |= inputs[index]
    local_kept[(index == root).nonzero().flatten()] = True
    kept = torch.zeros_like(kept)
    kept[index[local_kept]] = True
    targets, sources = edge_mask.nonzero(as_tuple=True)
    graph.kept = kept
    graph.edges = _edges(
        graph, index[targets], index[sources], dense[targets, sources], model, cache, feats
    )
    errors = nodes.of_kind(*ERROR_KINDS) | (nodes.of_kind(*FEATURE_KINDS) & ~kept)
    errors[root] = False
    opaque = nodes.of_kind("mlp_feature") & ~errors
    graph.pruned_scores, _ = graph_scores(graph.blocks, graph.n_nodes, root, inputs, errors, opaque)


def _dense(graph: AttributionGraph, index: torch.Tensor) -> torch.Tensor:
    """The adjacency among nodes `index` (sorted): `[K, K]`, rows targets."""
    position = torch.full((graph.n_nodes,), -1, dtype=torch.long)
    position[index] = torch.arange(len(index))
    dense = torch.zeros(len(index), len(index))
    for block in graph.blocks:
        local = position[block.targets]
        keep = local >= 0
        if not bool(keep.any()):
            continue
        in_dense = position[block.columns] >= 0
        columns = position[block.columns[in_dense]]
        dense[local[keep][:, None], columns[None]] = block.rows[keep][:, in_dense]
    return dense


def _prune_edges(
    dense: torch.Tensor, index: torch.Tensor, root: int, threshold: float, graph: AttributionGraph
) -> torch.Tensor:
    """circuit-tracer's edge pruning on the kept nodes' adjacency, then its clean-up:
    features and errors need an outgoing edge, expanded features an incoming one."""
    root_local = int((index == root).nonzero())
    normalized = dense.abs() / dense.abs().sum(1, keepdim=True).clamp(min=1e-10)
    weights = torch.zeros(len(index))
    weights[root_local] = 1.0
    node_influence = dense_influence(normalized, weights) + weights
    edge_scores = normalized * node_influence[:, None]
    positive = edge_scores[edge_scores > 0]
    if not len(positive):
        return torch.zeros_like(dense, dtype=torch.bool)
    mask = (edge_scores >= find_threshold(positive, threshold)) & (edge_scores > 0)
    expanded = torch.zeros(graph.n_nodes, dtype=torch.bool)
    for b in graph.blocks:
        expanded[b.targets] = True
    is_input = graph.nodes.of_kind(*INPUT_KINDS)[index]
    alive = torch.ones(len(index), dtype=torch.bool)
    while True:
        needs_out = ~is_input & (torch.arange(len(index)) != root_local)
        new_alive = alive & (~needs_out | mask.any(0))
        new_alive &= ~expanded[index] | mask.any(1) | (torch.arange(len(index)) == root_local)
        mask &= new_alive[:, None] & new_alive[None]
        if bool((new_alive == alive).all()):
            return mask
        alive = new_alive


def _edges(graph, targets, sources, weights, model, cache, feats) -> list[Edge]:
    """Kept edges with their head terms (edges into attention features; none into a logit
    or a transcoder feature)."""
    nodes = graph.nodes
    edges = [None] * len(targets)
    layer_of = nodes.layer[targets]
    headless = nodes.kind[targets] == KINDS.index("transcoder")
    if graph.target.is_logit:
        headless |= targets == graph.root
    for i in headless.nonzero().flatten().tolist():
        edges[i] = Edge(int(sources[i]), int(targets[i]), float(weights[i]))
    for layer in layer_of[~headless].unique().tolist():
        picked = (~headless & (layer_of == layer)).nonzero().flatten()
        unique, inverse = targets[picked].unique(return_inverse=True)
        reads = AttentionReads(
            model, cache, feats[layer], nodes.position[unique], nodes.index[unique]
        )
        src = sources[picked]
        terms = reads.head_terms(inverse, nodes.writes[src], nodes.position[src])
        for i, row in zip(picked.tolist(), terms.tolist(), strict=True):
            heads = tuple(zip(reads.heads, row, strict=True))
            edges[i] = Edge(int(sources[i]), int(targets[i]), float(weights[i]), heads)
    return sorted(edges, key=lambda e: -abs(e.weight))
