"""Attribution graphs with MLP SAEs and transcoders (`attribution.graph.mlp`): MLP SAE
features plus error add up to the MLP output, transcoder features close to their own
pre-activations, a planted transcoder path is recovered, and bad combinations are refused.

References: the model's own `hook_mlp_out` and residual stream, the transcoder's own
`hook_sae_acts_pre`, and a hand-built model whose path is known by construction.
"""

from __future__ import annotations

import pytest
import test_dashboard
import torch
from sae_lens import StandardSAE, StandardSAEConfig, Transcoder, TranscoderConfig
from sae_lens.saes.sae import SAEMetadata
from test_graph import graph_edges
from test_graph_cli import run_graph as cli_run_graph
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_lens_attn.attribution.graph import Pruning, build_graph
from sae_lens_attn.attribution.graph.mlp import check_mlp_saes, mlp_features
from sae_lens_attn.attribution.graph.nodes import KINDS, build_nodes, check_decomposition

pytestmark = pytest.mark.usefixtures("one_thread")
chromium = test_dashboard.chromium  # the session fixture: Chromium, installed if missing
D_MODEL, N_HEADS, D_HEAD, D_MLP, VOCAB = 32, 4, 8, 64, 40


def tiny_model() -> HookedTransformer:
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=D_MODEL,
        n_heads=N_HEADS,
        d_head=D_HEAD,
        d_mlp=D_MLP,
        d_vocab=VOCAB,
        n_ctx=16,
        act_fn="gelu",
        normalization_type="LN",
        device="cpu",
    )
    model = HookedTransformer(cfg).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm weights, so that the bias terms count
        for name, param in model.named_parameters():
            if name.endswith((".b", "b_O", "b_V", "b_in", "b_out")):
                param.normal_(0, 0.1)
            elif name.endswith(".w"):
                param.normal_(1, 0.2)
    return model


def _randomise(sae, seed: int, threshold: float):
    torch.manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.4)
        sae.W_dec.normal_(0, 0.3)
        sae.b_enc.normal_(-threshold, 0.1)
        sae.b_dec.normal_(0, 0.05)
    return sae


def attention_sae(layer: int, seed: int = 0, model_name: str | None = None) -> StandardSAE:
    metadata = SAEMetadata(hook_name=f"blocks.{layer}.attn.hook_z", model_name=model_name)
    sae = StandardSAE(StandardSAEConfig(d_in=N_HEADS * D_HEAD, d_sae=48, metadata=metadata))
    return _randomise(sae, seed, 0.5)


def mlp_sae(layer: int, seed: int = 10, model_name: str | None = None) -> StandardSAE:
    metadata = SAEMetadata(hook_name=f"blocks.{layer}.hook_mlp_out", model_name=model_name)
    sae = StandardSAE(StandardSAEConfig(d_in=D_MODEL, d_sae=64, metadata=metadata))
    return _randomise(sae, seed, 0.3)


def transcoder(layer: int, hook: str = "ln2.hook_normalized", seed: int = 20) -> Transcoder:
    metadata = SAEMetadata(hook_name=f"blocks.{layer}.{hook}")
    sae = Transcoder(
        TranscoderConfig(
            d_in=D_MODEL, d_out=D_MODEL, d_sae=64, apply_b_dec_to_input=False, metadata=metadata
        )
    )
    return _randomise(sae, seed, 0.5)


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    tokens = torch.randint(0, VOCAB, (12,), generator=torch.Generator().manual_seed(1))
    return model, [attention_sae(0, 0), attention_sae(1, 1)], tokens


def test_mlp_sae_features_and_error_add_up_to_the_mlp_output(setup):
    model, saes, tokens = setup
    sae = mlp_sae(0)
    _, cache = model.run_with_cache(tokens[None])
    cache = cache.remove_batch_dim()
    check_mlp_saes(model, [sae], [])
    feats = mlp_features(sae, 0, False, cache)
    nodes = build_nodes(model, cache, tokens, {}, None, {0: feats})
    layer_0 = nodes.layer == 0
    features = layer_0 & (nodes.kind == KINDS.index("mlp_feature"))
    errors = layer_0 & (nodes.kind == KINDS.index("mlp_error"))
    assert int(features.sum()) == int((feats.acts > 0).sum()) > 0
    assert (
        int(errors.sum()) == len(tokens) and not (nodes.kind == KINDS.index("mlp"))[layer_0].any()
    )
    total = torch.zeros(len(tokens), D_MODEL)
    total.index_add_(0, nodes.position[features | errors], nodes.writes[features | errors])
    reference = cache["blocks.0.hook_mlp_out"]
    torch.testing.assert_close(total + sae.b_dec.detach(), reference, atol=1e-5, rtol=0)
    # each feature writes its activation times its decoder row
    picked = features.nonzero().flatten()
    expected = (
        feats.acts[nodes.position[picked], nodes.index[picked], None]
        * sae.W_dec[nodes.index[picked]]
    )
    torch.testing.assert_close(nodes.writes[picked], expected.detach(), atol=1e-6, rtol=0)
    for layer in range(model.cfg.n_layers + 1):
        assert check_decomposition(nodes, cache, layer) < 1e-4
    for layer in range(model.cfg.n_layers):  # what a transcoder reads: below the MLP
        assert check_decomposition(nodes, cache, layer, mid=True) < 1e-4


@pytest.mark.parametrize("root", ["feature", "logit"])
def test_transcoder_features_close_to_their_pre_activations(setup, root):
    model, saes, tokens = setup
    transcoders = [transcoder(0, "ln2.hook_normalized", 20), transcoder(1, "hook_resid_mid", 21)]
    if root == "feature":
        _, cache = model.run_with_cache(tokens[None])
        from sae_lens_attn.attribution.graph.nodes import layer_features

        acts = layer_features(saes[1], model, cache.remove_batch_dim()).acts
        kwargs = dict(feature=(1, int(acts.max(0).values.argmax())))
    else:
        kwargs = dict(logit_token=int(tokens[-1]))
    graph = build_graph(model, saes, tokens, transcoders=transcoders, **kwargs)
    assert graph.closure_max_abs < 1e-4
    assert graph.transcoder_layers == (0, 1) and graph.mlp_sae_layers == ()
    kind = graph.nodes.kind
    expanded = [t for b in graph.blocks for t in b.targets.tolist()]
    transcoder_rows = [t for t in expanded if kind[t] == KINDS.index("transcoder")]
    assert transcoder_rows, "no transcoder feature was expanded"
    _, cache = model.run_with_cache(tokens[None])
    cache = cache.remove_batch_dim()
    for node in transcoder_rows:
        layer, q, f = (
            int(graph.nodes.layer[node]),
            int(graph.nodes.position[node]),
            int(graph.nodes.index[node]),
        )
        sae = transcoders[layer]
        pre = (cache[sae.cfg.metadata.hook_name][q] @ sae.W_enc[:, f] + sae.b_enc[f]).item()
        assert graph.value[node] == pytest.approx(pre, abs=1e-4)
        row = graph.incoming(node)
        assert row.sum().item() + graph.bias[node] == pytest.approx(pre, abs=1e-4)
        # a transcoder reads its own position, below its MLP: nothing else
        sources = row.nonzero().flatten()
        assert (graph.nodes.position[sources] == q).all()
        assert (graph.nodes.layer[sources] <= layer).all()
        assert not torch.isin(
            kind[sources], torch.tensor([KINDS.index("transcoder"), KINDS.index("mlp_error")])
        )[graph.nodes.layer[sources] == layer].any()
    assert not any(e.heads for e in graph.edges if kind[e.target] == KINDS.index("transcoder"))
    assert 0 <= graph.pruned_scores.replacement <= 1


def test_mlp_sae_features_are_leaves(setup):
    model, saes, tokens = setup
    graph = build_graph(
        model, saes, tokens, logit_token=int(tokens[-1]), mlp_saes=[mlp_sae(0), mlp_sae(1, 11)]
    )
    assert graph.closure_max_abs < 1e-4
    assert graph.mlp_sae_layers == (0, 1)
    kind = graph.nodes.kind
    expanded = {t for b in graph.blocks for t in b.targets.tolist()}
    assert not any(kind[t] == KINDS.index("mlp_feature") for t in expanded)
    assert any(kind[e.source] == KINDS.index("mlp_feature") for e in graph.edges)


# --- a planted transcoder path --------------------------------------------------------
N_TOK = 6  # tokens; residual: TOK (one-hot tokens) | MID (the transcoder's output)


def planted_model() -> HookedTransformer:
    """One layer, no LayerNorm, attention writing nothing; the MLP copies the token one-hot
    into MID (so a transcoder of feature `t` for token `t` reconstructs it), and W_U reads
    MID. The logit of `t` then reads transcoder feature `t` at the last position, which
    reads that position's token embedding."""
    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=2 * N_TOK,
        n_heads=1,
        d_head=2,
        d_mlp=N_TOK,
        d_vocab=N_TOK,
        n_ctx=8,
        act_fn="relu",
        normalization_type=None,
        device="cpu",
    )
    model = HookedTransformer(cfg)
    t = torch.arange(N_TOK)
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.embed.W_E[t, t] = 1.0
        model.blocks[0].mlp.W_in[t, t] = 1.0
        model.blocks[0].mlp.W_out[t, N_TOK + t] = 1.0
        model.unembed.W_U[N_TOK + t, t] = 3.0
    return model.eval()


def planted_transcoder() -> Transcoder:
    metadata = SAEMetadata(hook_name="blocks.0.hook_resid_mid")
    sae = Transcoder(
        TranscoderConfig(
            d_in=2 * N_TOK,
            d_out=2 * N_TOK,
            d_sae=N_TOK,
            apply_b_dec_to_input=False,
            metadata=metadata,
        )
    )
    t = torch.arange(N_TOK)
    with torch.no_grad():
        for param in sae.parameters():
            param.zero_()
        sae.W_enc[t, t] = 1.0
        sae.W_dec[t, N_TOK + t] = 1.0
        sae.b_enc.fill_(-0.2)
        sae.W_dec.mul_(1 / 0.8)  # a one-hot input is reconstructed exactly
    return sae


def test_a_planted_transcoder_path_is_recovered():
    model, sae = planted_model(), planted_transcoder()
    for tokens in ([1, 4, 2, 5], [3, 3, 0, 2, 1]):
        tokens = torch.tensor(tokens)
        token = int(tokens[-1])
        graph = build_graph(
            model,
            [],
            tokens,
            logit_token=token,
            transcoders=[sae],
            pruning=Pruning(node_threshold=0.99, edge_threshold=0.99),
        )
        assert graph.closure_max_abs < 1e-5
        last = len(tokens) - 1
        feature = ("transcoder", 0, last, token)
        assert graph_edges(graph) == {
            (feature, ("logit", 1, last, token)),
            (("embedding", -1, last, token), feature),
        }
        (edge,) = [e for e in graph.edges if graph.kind(e.target) == "logit"]
        assert edge.weight == pytest.approx(3.0, abs=1e-5)  # activation 0.8 x (1/0.8) x 3
        assert graph.scores.replacement == pytest.approx(1.0, abs=1e-6)


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "mlp_saes, transcoders, message",
    [
        (lambda: [mlp_sae(0), mlp_sae(0, 12)], lambda: [], "two MLP SAEs for layer 0"),
        (
            lambda: [],
            lambda: [transcoder(1), transcoder(1, "hook_resid_mid")],
            "two transcoders for layer 1",
        ),
        (lambda: [mlp_sae(0)], lambda: [transcoder(0)], "an MLP SAE and a transcoder for layer 0"),
        (lambda: [attention_sae(0)], lambda: [], "MLP SAE on 'blocks.0.attn.hook_z'"),
        (
            lambda: [],
            lambda: [transcoder(0, "hook_mlp_out")],
            "transcoder on 'blocks.0.hook_mlp_out'",
        ),
        (lambda: [transcoder(0, "hook_mlp_out")], lambda: [], "is a Transcoder"),
        (lambda: [mlp_sae(0, model_name="gpt2-small")], lambda: [], "different models"),
    ],
)
def test_bad_mlp_saes_and_transcoders_are_refused(setup, mlp_saes, transcoders, message):
    model, _, tokens = setup
    saes = [attention_sae(0, model_name="tiny"), attention_sae(1, 1, model_name="tiny")]
    with pytest.raises(ValueError, match=message):
        build_graph(
            model, saes, tokens, logit_token=0, mlp_saes=mlp_saes(), transcoders=transcoders()
        )


# --- the command --------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_folders(tmp_path_factory):
    """Random attention SAEs on both layers of the embedded model, a transcoder on layer 0
    and an MLP SAE on layer 1, saved."""
    from sae_lens_attn.models import load_embedded_model

    model = load_embedded_model()
    d_model, d_z = model.cfg.d_model, model.cfg.n_heads * model.cfg.d_head
    root = tmp_path_factory.mktemp("graph_mlp")
    folders = {}

    def save_standard(name: str, d_in: int, hook_name: str, seed: int, scale: float) -> None:
        metadata = SAEMetadata(hook_name=hook_name, model_name="embedded")
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=96, metadata=metadata))
        _randomise(sae, seed, scale).save_model(root / name)
        folders[name] = str(root / name)

    for layer in range(2):
        save_standard(f"attn{layer}", d_z, f"blocks.{layer}.attn.hook_z", layer, 0.5)
    tc = Transcoder(
        TranscoderConfig(
            d_in=d_model,
            d_out=d_model,
            d_sae=96,
            apply_b_dec_to_input=False,
            metadata=SAEMetadata(hook_name="blocks.0.ln2.hook_normalized", model_name="embedded"),
        )
    )
    _randomise(tc, 30, 0.5).save_model(root / "tc0")
    folders["tc0"] = str(root / "tc0")
    for layer in range(2):
        save_standard(f"mlp{layer}", d_model, f"blocks.{layer}.hook_mlp_out", 40 + layer, 0.3)
    return folders


def run_graph(out, folders: dict, *extra: str) -> int:
    """`test_graph_cli.run_graph` on both attention SAEs, from the logit of `_`, pruned."""
    attention = [folders["attn0"], folders["attn1"]]
    thresholds = ("--node-threshold", "1.0", "--edge-threshold", "1.0")
    return cli_run_graph(out, attention, "--logit", "_", *thresholds, *extra)


@pytest.fixture(scope="module")
def mlp_graph(embedded_folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("graph_mlp_cli") / "graph"
    extra = ("--transcoder", embedded_folders["tc0"], "--mlp-sae", embedded_folders["mlp1"])
    assert run_graph(out, embedded_folders, *extra) == 0
    return out


def test_the_command_writes_transcoder_and_mlp_sae_nodes_that_circuit_tracer_reads(mlp_graph):
    import json

    out = mlp_graph
    data = json.loads((out / "graph.json").read_text())
    info = data["metadata"]["info"]
    assert info["closure_max_abs"] < 1e-4
    assert info["transcoder_layers"] == [0] and info["mlp_sae_layers"] == [1]
    kinds = {n["kind"] for n in data["nodes"]}
    assert {"transcoder", "mlp_feature", "mlp_error", "feature"} <= kinds and "mlp" not in kinds
    for node in data["nodes"]:
        if node["kind"] in ("transcoder", "mlp_feature"):
            assert node["feature_type"] == "cross layer transcoder"
        if node["kind"] == "mlp_error":
            assert node["feature_type"] == "mlp reconstruction error"
    ids = {n["node_id"] for n in data["nodes"]}
    into_transcoders = [link for link in data["links"] if link["target"].startswith("T0_")]
    assert into_transcoders and all("heads" not in link for link in into_transcoders)
    assert all(link["source"] in ids for link in data["links"])
    graph_models = pytest.importorskip("circuit_tracer.frontend.graph_models")
    model = graph_models.Model.model_validate(data)
    keys = {(n.layer, n.feature, n.ctx_idx) for n in model.nodes}  # the viewer's key
    assert len(keys) == len(model.nodes) == len(ids)
    page = (out / "graph.html").read_text()
    assert "transcoder feature #" in page and "MLP SAE feature #" in page


def test_our_page_draws_mlp_sae_and_transcoder_nodes(mlp_graph, chromium, tmp_path):
    import json

    from test_dashboard import parse_dom, run_chromium

    data = json.loads((mlp_graph / "graph.json").read_text())
    dom = parse_dom(run_chromium(chromium, mlp_graph / "graph.html", tmp_path / "profile"))
    circles = dom.find_all("circle")
    assert len(circles) == len(data["nodes"])
    classes = {c.attrs["class"] for c in circles}
    assert {"node transcoder", "node mlp_feature", "node mlp_error"} <= classes
    labels = {t.text() for t in dom.find_all("text", "label")}
    assert {"L0 mlp feat", "L1 mlp feat", "logit"} <= labels


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--mlp-sae", "mlp0", "--transcoder", "tc0"), "an MLP SAE and a transcoder for layer 0"),
        (("--mlp-sae", "mlp1", "--mlp-sae", "mlp1"), "two MLP SAEs for layer 1"),
        (("--mlp-sae", "attn0"), "MLP SAE on 'blocks.0.attn.hook_z'"),
        (("--transcoder", "mlp0"), "transcoder on 'blocks.0.hook_mlp_out'"),
        (("--mlp-sae", "other"), "different models"),
    ],
)
def test_bad_mlp_options_are_one_error_line(embedded_folders, tmp_path, capsys, extra, message):
    from sae_lens import SAE

    folders = dict(embedded_folders)
    other = SAE.load_from_disk(folders["mlp0"])
    other.cfg.metadata.model_name = "gpt2-small"
    other.save_model(tmp_path / "other")
    folders["other"] = str(tmp_path / "other")
    extra = tuple(folders.get(value, value) for value in extra)
    out = tmp_path / "out"
    code = run_graph(out, folders, *extra)
    lines = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    errors = [line for line in lines if not line.startswith("graph:")]
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith("error:") and message in errors[0], errors
    assert not out.exists()


def test_circuit_tracers_viewer_draws_the_mlp_sae_and_transcoder_nodes(
    mlp_graph, chromium, tmp_path
):
    """circuit-tracer's own frontend, served by `serve`, draws every node its pruning
    slider shows, transcoder and MLP SAE feature nodes (negative `feature` numbers)
    included."""
    import json

    from test_dashboard import parse_dom, run_chromium
    from test_graph_cli import serving, shown_nodes

    data = json.loads((mlp_graph / "graph.json").read_text())
    with serving(mlp_graph) as url:
        dom = parse_dom(run_chromium(chromium, url, tmp_path / "profile"))
    (link_graph,) = dom.find_all("div", "link-graph")
    shown = shown_nodes(data)
    assert {"transcoder", "mlp_feature"} <= {node["kind"] for node in shown}
    assert len(link_graph.find_all("text", "node")) == len(shown)
