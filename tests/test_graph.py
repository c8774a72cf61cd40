"""Attribution graphs (`sae_lens_attn.attribution.graph`): exact edges, circuit-tracer's
influence and scores, and planted paths recovered.

References: the residual stream itself (the nodes' writes add up to it), the one-level
circuit attribution (`circuit.upstream`, which splits the same DFA by component), the
SAE's own pre-activations (closure), circuit-tracer's `compute_graph_scores` and
`compute_node_influence` on the dense adjacency, and a hand-built model whose paths are
known by construction.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_lens_attn.attribution.circuit import feature_circuit
from sae_lens_attn.attribution.graph import Pruning, build_graph
from sae_lens_attn.attribution.graph.nodes import KINDS, build_nodes, check_decomposition

pytestmark = pytest.mark.usefixtures("one_thread")


def random_sae(layer: int, d_in: int, d_sae: int, seed: int) -> StandardSAE:
    torch.manual_seed(seed)
    sae = StandardSAE(
        StandardSAEConfig(
            d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=f"blocks.{layer}.attn.hook_z")
        )
    )
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.W_dec.normal_(0, 0.3)
        sae.b_enc.normal_(-0.5, 0.1)
        sae.b_dec.normal_(0, 0.05)
    return sae


@pytest.fixture(scope="module")
def embedded():
    from sae_lens_attn.models import load_embedded_model

    model = load_embedded_model()
    saes = [random_sae(layer, 128, 96, seed=layer) for layer in range(2)]
    tokens = model.to_tokens("max_size = 10\nmax_size")[0]
    return model, saes, tokens


def dense_adjacency(graph) -> torch.Tensor:
    n = graph.n_nodes
    dense = torch.zeros(n, n)
    for block in graph.blocks:
        dense[block.targets, : block.rows.shape[1]] = block.rows
    return dense


def test_node_writes_add_up_to_the_residual_stream(embedded):
    model, saes, tokens = embedded
    from sae_lens_attn.attribution.graph.nodes import layer_features

    _, cache = model.run_with_cache(tokens[None])
    cache = cache.remove_batch_dim()
    feats = {0: layer_features(saes[0], model, cache)}  # layer 1 without an SAE
    nodes = build_nodes(model, cache, tokens, feats)
    for layer in range(model.cfg.n_layers + 1):
        assert check_decomposition(nodes, cache, layer) < 1e-4
    assert (nodes.kind == KINDS.index("feature")).sum() == (feats[0].acts > 0).sum()


@pytest.mark.parametrize("root", ["feature", "logit"])
def test_every_expanded_node_closes_to_its_pre_activation(embedded, root):
    model, saes, tokens = embedded
    if root == "feature":
        graph = build_graph(model, saes, tokens, feature=_active_feature(model, saes[1], tokens))
    else:
        graph = build_graph(model, saes, tokens, logit_token=int(tokens[-1]))
    assert graph.closure_max_abs < 1e-4
    # the same closure, checked here from the stored rows, biases and values
    for block in graph.blocks:
        for target, row in zip(block.targets.tolist(), block.rows, strict=True):
            assert abs(row.sum().item() + graph.bias[target] - graph.value[target]) < 1e-4
    assert len(graph.blocks) > 1  # layer-0 features were expanded too
    feature_rows = [t for b in graph.blocks for t in b.targets.tolist() if t != graph.root]
    assert all(graph.nodes.layer[t] < graph.target.layer for t in feature_rows)
    assert {int(graph.nodes.layer[t]) for t in feature_rows} == set(range(graph.target.layer))


def _active_feature(model, sae, tokens) -> tuple[int, int]:
    from sae_lens_attn.attribution.graph.nodes import layer_features

    _, cache = model.run_with_cache(tokens[None])
    acts = layer_features(sae, model, cache.remove_batch_dim()).acts
    return 1, int(acts.max(0).values.argmax())


def test_root_edges_from_embeddings_equal_the_circuit_value_side_per_head(embedded):
    model, saes, tokens = embedded
    layer, feature = _active_feature(model, saes[1], tokens)
    graph = build_graph(
        model,
        saes,
        tokens,
        feature=(layer, feature),
        pruning=Pruning(node_threshold=1.0, edge_threshold=1.0, max_nodes=10**6),
    )
    circuit = feature_circuit(
        model,
        saes[1],
        tokens,
        feature,
        destination=graph.target.position,
        query_key=False,
        downstream=False,
    )
    embed = circuit.value.labels.index("embed")
    root_row = graph.incoming(graph.root)
    nodes = graph.nodes
    for edge in graph.edges:
        if edge.target == graph.root and nodes.kind[edge.source] == KINDS.index("embedding"):
            k = int(nodes.position[edge.source])
            expected = circuit.value.terms[embed, k]  # [n_heads]
            torch.testing.assert_close(
                torch.tensor([t for _, t in edge.heads]), expected, atol=1e-4, rtol=1e-4
            )
            assert abs(root_row[edge.source].item() - expected.sum().item()) < 1e-4
    assert abs(graph.root_value - circuit.value.pre_activation) < 1e-5


def test_influence_and_scores_equal_circuit_tracers(embedded):
    ct_graph = pytest.importorskip("circuit_tracer.graph")
    model, saes, tokens = embedded
    graph = build_graph(model, saes, tokens, logit_token=int(tokens[-1]))
    nodes = graph.nodes
    kind = nodes.kind
    # circuit-tracer's order: features, error nodes, token nodes, logits
    order = torch.cat(
        [
            (kind == KINDS.index("feature")).nonzero().flatten(),
            ((kind == KINDS.index("attn_error")) | (kind == KINDS.index("mlp")))
            .nonzero()
            .flatten(),
            (kind == KINDS.index("embedding")).nonzero().flatten(),
            torch.tensor([graph.root]),
        ]
    )
    dense = dense_adjacency(graph)[order][:, order]
    n_tokens = int((kind == KINDS.index("embedding")).sum())
    n_errors = int(((kind == KINDS.index("attn_error")) | (kind == KINDS.index("mlp"))).sum())
    weights = torch.zeros(len(order))
    weights[-1] = 1.0
    reference = ct_graph.compute_node_influence(dense, weights)
    torch.testing.assert_close(graph.node_influence[order], reference, atol=1e-5, rtol=1e-4)
    fake = SimpleNamespace(
        adjacency_matrix=dense,
        input_tokens=torch.zeros(n_tokens),
        logit_targets=[0],
        selected_features=torch.zeros(int((kind == KINDS.index("feature")).sum())),
        logit_probabilities=torch.ones(1),
        cfg=SimpleNamespace(n_layers=n_errors // n_tokens),
    )
    replacement, completeness = ct_graph.compute_graph_scores(fake)
    assert graph.scores.replacement == pytest.approx(replacement, abs=1e-5)
    assert graph.scores.completeness == pytest.approx(completeness, abs=1e-5)
    assert 0 <= graph.pruned_scores.replacement <= 1


# --- planted paths -------------------------------------------------------------------
VOCAB, N_CTX = 12, 24
D_HEAD = N_CTX  # layer 0's query/key needs one dimension per position
TOK, PREV, OUT = 0, VOCAB, 2 * VOCAB  # residual subspaces
SHARP = 12.0


def planted_model() -> HookedTransformer:
    """Layer 0 copies the previous token into PREV; layer 1 averages PREV over all earlier
    positions (uniform attention) into OUT; W_U reads OUT. So the logit of `t` reads the
    layer-1 feature `t`, which reads every layer-0 feature `t` below it, each of which
    reads the token embedding one position back."""
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=3 * VOCAB + N_CTX,
        n_heads=1,
        d_head=D_HEAD,
        d_vocab=VOCAB,
        n_ctx=N_CTX,
        attn_only=True,
        normalization_type=None,
        act_fn=None,
        device="cpu",
    )
    model = HookedTransformer(cfg)
    t, p = torch.arange(VOCAB), torch.arange(N_CTX)
    pos = 3 * VOCAB
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.embed.W_E[t, TOK + t] = 1.0
        model.pos_embed.W_pos[p, pos + p] = 1.0
        prev, mix = model.blocks[0].attn, model.blocks[1].attn
        prev.W_Q[0, pos + p[1:], p[1:] - 1] = SHARP
        prev.W_K[0, pos + p, p] = SHARP
        prev.W_V[0, TOK + t, t] = 1.0
        prev.W_O[0, t, PREV + t] = 1.0
        mix.W_V[0, PREV + t, t] = 1.0
        mix.W_O[0, t, OUT + t] = 1.0
        model.unembed.W_U[OUT + t, t] = 5.0
    return model.eval()


def identity_sae(layer: int, threshold: float) -> StandardSAE:
    """Feature `t` reads and writes direction `t`, firing above `threshold`; the decoder
    is scaled so that a one-hot input is reconstructed exactly (no error node)."""
    sae = StandardSAE(
        StandardSAEConfig(
            d_in=D_HEAD, d_sae=VOCAB, metadata=SAEMetadata(hook_name=f"blocks.{layer}.attn.hook_z")
        )
    )
    with torch.no_grad():
        for param in sae.parameters():
            param.zero_()
        sae.W_enc[torch.arange(VOCAB), torch.arange(VOCAB)] = 1.0
        sae.W_dec[torch.arange(VOCAB), torch.arange(VOCAB)] = 1.0 / (1.0 - threshold)
        sae.b_enc.fill_(-threshold)
    return sae


def planted_edges(tokens: list[int], token: int) -> set[tuple]:
    """(source, target) of the planted paths into the logit of `token` at the last position;
    nodes as (kind, layer, position, index)."""
    last = len(tokens) - 1
    logit = ("logit", 2, last, token)
    top = ("feature", 1, last, token)
    edges = {(top, logit)}
    for k in range(last + 1):
        source = max(k - 1, 0)
        if tokens[source] == token:
            bottom = ("feature", 0, k, token)
            edges |= {(bottom, top), (("embedding", -1, source, token), bottom)}
    return edges


def graph_edges(graph) -> set[tuple]:
    nodes = graph.nodes

    def name(n: int) -> tuple:
        return (graph.kind(n), int(nodes.layer[n]), int(nodes.position[n]), int(nodes.index[n]))

    return {(name(e.source), name(e.target)) for e in graph.edges}


def test_planted_paths_are_recovered_with_precision_and_recall_above_0_9():
    model = planted_model()
    saes = [identity_sae(0, 0.3), identity_sae(1, 1e-6)]
    generator = torch.Generator().manual_seed(0)
    found = planted = hits = 0
    for trial in range(6):
        tokens = torch.randint(1, VOCAB, (N_CTX - 4 * (trial % 3),), generator=generator)
        token = int(tokens[trial + 2])
        graph = build_graph(model, saes, tokens, logit_token=token)
        assert graph.closure_max_abs < 1e-4
        got, want = graph_edges(graph), planted_edges(tokens.tolist(), token)
        found, planted, hits = found + len(got), planted + len(want), hits + len(got & want)
    precision, recall = hits / found, hits / planted
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)


def test_heads_of_each_edge_add_up_to_its_weight(embedded):
    model, saes, tokens = embedded
    graph = build_graph(model, saes, tokens, logit_token=int(tokens[-1]))
    into_features = [e for e in graph.edges if e.heads]
    assert into_features
    for edge in into_features:
        assert sum(t for _, t in edge.heads) == pytest.approx(edge.weight, abs=1e-4)
