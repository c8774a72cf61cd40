"""`sae-lens-attn graph` on the embedded model with tiny SAEs trained on layers 0 and 1:
the known induction circuit, circuit-tracer's JSON models, both pages in headless
Chromium, `serve`, and every bad input of the issue (one `error:` line, exit 2, nothing
written; a layer without an SAE is a `warning:` line).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import test_dashboard
from test_dashboard import parse_dom, run_chromium

from sae_lens_attn import cli
from sae_lens_attn.attribution.graph import build_graph

pytestmark = pytest.mark.usefixtures("one_thread")
chromium = test_dashboard.chromium  # the session fixture: Chromium, installed if missing
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PROMPT = "max_size = 10\nmax"  # the README's `_` induction prompt
DESTINATION, FIRST = 7, 1  # the second `max`, the first one


@pytest.fixture(scope="module")
def embedded_saes(tmp_path_factory):
    """Block-diagonal SAEs on layers 0 and 1 of the embedded model (40k tokens each, a few
    seconds), saved; and the model."""
    from sae_lens_attn.models import load_embedded_model, load_embedded_tokenizer
    from sae_lens_attn.models.dataset import corpus_tokens
    from sae_lens_attn.training.train import train_hook_z_sae

    model = load_embedded_model()
    tokens = corpus_tokens(load_embedded_tokenizer(), 64, 1000, "train")
    root = tmp_path_factory.mktemp("graph_saes")
    saes, folders = [], []
    for layer in (0, 1):
        sae, _ = train_hook_z_sae(
            model,
            layer,
            architecture="block_diagonal",
            dataset=tokens,
            training_tokens=40_000,
            d_sae=512,
            lr=2e-3,
            output_path=root / f"L{layer}",
        )
        saes.append(sae)
        folders.append(str(root / f"L{layer}"))
    return model, saes, folders


def induction_feature(model, saes) -> tuple[int, object]:
    """The layer-1 feature most active at the second `max` whose DFA comes mostly from the
    `_` after the first one (chosen by the value side of `circuit`, not by the graph)."""
    from sae_lens_attn.attribution.circuit import feature_circuit
    from sae_lens_attn.attribution.graph.nodes import layer_features

    tokens = model.to_tokens(PROMPT)[0]
    _, cache = model.run_with_cache(tokens[None])
    acts = layer_features(saes[1], model, cache.remove_batch_dim()).acts[DESTINATION]
    for feature in acts.argsort(descending=True)[:10].tolist():
        circuit = feature_circuit(
            model,
            saes[1],
            tokens,
            feature,
            destination=DESTINATION,
            query_key=False,
            downstream=False,
        )
        by_source = circuit.value.dfa.sum(-1)
        if (
            int(by_source.argmax()) == FIRST + 1
            and by_source[FIRST + 1] > 0.5 * by_source.abs().sum()
        ):
            return feature, tokens
    pytest.fail("no layer-1 feature at the second `max` reads the `_` after the first one")


def test_induction_feature_routes_through_layer_0_features_after_the_earlier_occurrence(
    embedded_saes,
):
    model, saes, _ = embedded_saes
    feature, tokens = induction_feature(model, saes)
    graph = build_graph(model, saes, tokens, feature=(1, feature), position=DESTINATION)
    assert graph.closure_max_abs < 1e-4
    nodes, root = graph.nodes, graph.root
    root_head = int(nodes.head[root])
    assert root_head in (0, 2)  # the model's induction heads, L1H0 and L1H2
    into_root = [e for e in graph.edges if e.target == root]
    from_layer_0 = [
        e
        for e in into_root
        if graph.kind(e.source) == "feature" and int(nodes.layer[e.source]) == 0
    ]
    assert from_layer_0, "no layer-0 feature feeds the induction feature"
    after = FIRST + 1
    assert all(int(nodes.position[e.source]) == after for e in from_layer_0)
    for edge in into_root:  # every edge goes through the root's head only (block-diagonal)
        terms = dict(edge.heads)
        assert terms[root_head] == pytest.approx(edge.weight, abs=1e-5)
    # the recursion goes on: those layer-0 features have their own edges, down to tokens
    expanded = {e.target for e in graph.edges}
    assert any(e.source in expanded for e in from_layer_0)
    assert any(
        graph.kind(e.source) == "embedding" and e.target in {f.source for f in from_layer_0}
        for e in graph.edges
    )
    # what freezing hides: the previous-token head L0H0 acts on the key side. Its layer-0
    # features at the source carry little of the value side ...
    row = graph.incoming(root)
    at_source = (nodes.kind[: len(row)] == 2) & (nodes.position[: len(row)] == after)
    prev_head = at_source & (nodes.head[: len(row)] == 0)
    assert row[prev_head].abs().sum() < 0.5 * row[at_source].abs().sum()
    # ... while `circuit`'s query/key side names it as what raises the attention score
    from sae_lens_attn.attribution.circuit import feature_circuit

    circuit = feature_circuit(
        model, saes[1], tokens, feature, destination=DESTINATION, downstream=False
    )
    qk = circuit.query_key
    assert qk.key_labels[int(qk.key_totals.argmax())] == "L0H0"


def run_graph(out: Path, folders: list[str], *extra: str) -> int:
    return cli.main(
        [
            "graph",
            *sum((["--sae", f] for f in folders), []),
            "--prompt",
            PROMPT,
            "--out",
            str(out),
            "--threads",
            "1",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def graph_folder(embedded_saes, tmp_path_factory):
    model, saes, folders = embedded_saes
    feature, _ = induction_feature(model, saes)
    out = tmp_path_factory.mktemp("graph_cli") / "graph"
    assert (
        run_graph(
            out,
            folders,
            "--feature",
            f"1:{feature}@{DESTINATION}",
            "--feature-url",
            "atlas-L{layer}/feature.html#{feature}",
        )
        == 0
    )
    return out, feature


def test_graph_json_passes_circuit_tracers_models(graph_folder):
    graph_models = pytest.importorskip("circuit_tracer.frontend.graph_models")
    out, feature = graph_folder
    data = json.loads((out / "graph.json").read_text())
    model = graph_models.Model.model_validate(data)
    ids = {node.node_id for node in model.nodes}
    assert len(ids) == len(model.nodes)
    # the viewer's own key (`featureId` in its util-cg.js) is unique too
    keys = {(node.layer, node.feature, node.ctx_idx) for node in model.nodes}
    assert len(keys) == len(model.nodes)
    assert all(link["source"] in ids and link["target"] in ids for link in model.links)
    assert f"1_{feature}_{DESTINATION}" in ids
    assert any(node.feature_type == "embedding" for node in model.nodes)
    metadata = json.loads((out / "graph-metadata.json").read_text())
    graph_models.Metadata.model_validate(metadata["graphs"][0])
    info = data["metadata"]["info"]
    assert info["closure_max_abs"] < 1e-4
    assert 0 <= info["pruned_replacement_score"] <= info["replacement_score"] <= 1


def test_our_page_opens_from_file_and_draws_the_graph(graph_folder, chromium, tmp_path):
    out, feature = graph_folder
    data = json.loads((out / "graph.json").read_text())
    dom = parse_dom(
        run_chromium(
            chromium,
            out / "graph.html",
            tmp_path / "profile",
            screenshot=ARTIFACTS / "graph-page.png",
        )
    )
    body = dom.find_all("body")[0]
    assert body.attrs["data-graph-nodes"] == str(len(data["nodes"]))
    circles = dom.find_all("circle")
    assert len(circles) == len(data["nodes"])
    assert len(dom.find_all("path")) == len(data["links"])
    tokens = [n.text() for n in dom.find_all("span", "tok")]
    assert tokens == data["metadata"]["prompt_tokens"]


@contextlib.contextmanager
def serving(folder: Path):
    """`sae-lens-attn serve` on a graph folder, on a free port: its viewer URL."""
    pytest.importorskip("circuit_tracer.frontend.local_server")
    server = subprocess.Popen(
        [sys.executable, "-m", "sae_lens_attn", "serve", str(folder), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield server.stdout.readline().split(" at ")[1].split()[0]
    finally:
        server.terminate()
        server.wait(timeout=10)


def shown_nodes(data: dict) -> list[dict]:
    """The nodes circuit-tracer's viewer draws at its initial pruning slider (the graph's
    node threshold): embeddings, logits and those within it."""
    threshold = data["metadata"]["node_threshold"]
    return [
        node
        for node in data["nodes"]
        if node["feature_type"] in ("embedding", "logit") or node["influence"] <= threshold
    ]


@pytest.fixture
def served_graph(graph_folder):
    out, _ = graph_folder
    with serving(out) as url:
        yield url


def test_serve_serves_circuit_tracers_viewer_with_the_graph(served_graph):
    base = served_graph.split("/index.html")[0]
    with urllib.request.urlopen(served_graph, timeout=10) as response:
        page = response.read().decode()
    assert "attribution_graph/init-cg.js" in page
    scripts = re.findall(r"<script src=['\"]([^'\"]+)", page)
    assert scripts and not [src for src in scripts if "//" in src]  # all on this server
    for src in scripts:
        with urllib.request.urlopen(base + "/" + src.lstrip("./"), timeout=10) as response:
            assert response.status == 200 and response.read()
    with urllib.request.urlopen(base + "/data/graph-metadata.json", timeout=10) as response:
        slug = json.load(response)["graphs"][0]["slug"]
    with urllib.request.urlopen(f"{base}/graph_data/{slug}.json", timeout=10) as response:
        assert json.load(response)["nodes"]


def test_circuit_tracers_viewer_renders_the_graph_offline(
    graph_folder, served_graph, chromium, tmp_path
):
    """circuit-tracer's own frontend, served by `serve`, draws every node of the graph
    (its pruning slider starts at the graph's node threshold) and the prompt's tokens in
    Chromium with no network: its CDN libraries come from our vendored copies."""
    out, _ = graph_folder
    data = json.loads((out / "graph.json").read_text())
    dom = parse_dom(
        run_chromium(
            chromium, served_graph, tmp_path / "profile", screenshot=ARTIFACTS / "graph-viewer.png"
        )
    )
    (link_graph,) = dom.find_all("div", "link-graph")
    shown = shown_nodes(data)
    root = data["metadata"]["info"]["root"]
    assert root in {node["node_id"] for node in shown}
    assert (
        len(link_graph.find_all("text", "node"))
        == len(shown)
        > len(data["metadata"]["prompt_tokens"])
    )
    tokens = [g.text() for g in link_graph.find_all("g", "prompt-token")]
    assert tokens == data["metadata"]["prompt_tokens"]
    assert dom.find_all("select", "graph-prompt-select")[0].text().endswith(PROMPT)
    # the root opens selected (`qParams.clickedId`): its panel lists its incoming edges
    assert data["qParams"]["clickedId"] == root
    (inputs,) = dom.find_all("div", "input")
    # one row per incoming edge, labelled with its source (embeddings get the viewer's own
    # label), so the two error nodes at one position are told apart
    clerps = {node["node_id"]: node["clerp"] for node in data["nodes"]}
    sources = [clerps[link["source"]] for link in data["links"] if link["target"] == root]
    rows = inputs.find_all("div", "feature-row")
    labels = [row.find_all("div", "label")[0].attrs["title"] for row in rows]
    assert len(labels) == len(sources) > 0
    assert sorted(t for t in labels if not t.startswith("Emb:")) == sorted(
        t for t in sources if not t.startswith("Emb:")
    )
    assert any(t.startswith("Err: attention") for t in labels)


# --- bad input ----------------------------------------------------------------------


def saved_copy(folder: str, target: Path, **metadata) -> str:
    from sae_lens import SAE

    sae = SAE.load_from_disk(folder)
    for key, value in metadata.items():
        setattr(sae.cfg.metadata, key, value)
    sae.save_model(target)
    return str(target)


def expect_error(capsys, out: Path, code: int, *needles: str) -> None:
    lines = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    err = [line for line in lines if not line.startswith("graph:")]  # the progress bar
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error:"), err
    for needle in needles:
        assert needle in err[0], err[0]
    assert not out.exists()


def test_saes_of_different_models_are_refused(embedded_saes, tmp_path, capsys):
    _, _, folders = embedded_saes
    other = saved_copy(folders[0], tmp_path / "other", model_name="gpt2-small")
    out = tmp_path / "out"
    expect_error(
        capsys, out, run_graph(out, [other, folders[1]], "--logit", "_"), "different models"
    )


def test_two_saes_for_one_layer_are_refused(embedded_saes, tmp_path, capsys):
    _, _, folders = embedded_saes
    out = tmp_path / "out"
    expect_error(
        capsys,
        out,
        run_graph(out, [folders[0], folders[0], folders[1]], "--logit", "_"),
        "two SAEs for layer 0",
    )


def test_a_non_hook_z_sae_is_refused(embedded_saes, tmp_path, capsys):
    _, _, folders = embedded_saes
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    mlp = tmp_path / "mlp"
    StandardSAE(
        StandardSAEConfig(
            d_in=128, d_sae=64, metadata=SAEMetadata(hook_name="blocks.0.hook_mlp_out")
        )
    ).save_model(mlp)
    out = tmp_path / "out"
    expect_error(
        capsys,
        out,
        run_graph(out, [str(mlp), folders[1]], "--logit", "_"),
        "'blocks.0.hook_mlp_out', not an attention hook_z",
    )


def test_a_prompt_longer_than_n_ctx_is_refused(embedded_saes, tmp_path, capsys):
    model, _, folders = embedded_saes
    out = tmp_path / "out"
    code = cli.main(
        [
            "graph",
            "--sae",
            folders[0],
            "--sae",
            folders[1],
            "--prompt",
            " ".join(map(str, range(2 * model.cfg.n_ctx))),
            "--logit",
            "_",
            "--out",
            str(out),
        ]
    )
    expect_error(capsys, out, code, f"n_ctx={model.cfg.n_ctx}")


def test_a_feature_inactive_at_the_position_lists_where_it_is_active(
    embedded_saes, tmp_path, capsys
):
    model, saes, folders = embedded_saes
    feature, tokens = induction_feature(model, saes)
    from sae_lens_attn.attribution.graph.nodes import layer_features

    _, cache = model.run_with_cache(tokens[None])
    acts = layer_features(saes[1], model, cache.remove_batch_dim()).acts[:, feature]
    active = (acts > 0).nonzero().flatten().tolist()
    silent = next(p for p in range(len(tokens)) if p not in active)
    out = tmp_path / "out"
    expect_error(
        capsys,
        out,
        run_graph(out, folders, "--feature", f"1:{feature}@{silent}"),
        f"not active at position {silent}",
        "active at positions: " + ", ".join(map(str, active)),
    )


def test_a_logit_that_is_not_one_token_is_refused(embedded_saes, tmp_path, capsys):
    _, _, folders = embedded_saes
    out = tmp_path / "out"
    expect_error(
        capsys, out, run_graph(out, folders, "--logit", "max_size = 10"), "expected one token"
    )


def test_a_layer_without_an_sae_is_error_nodes_with_a_warning(embedded_saes, tmp_path, capsys):
    model, saes, folders = embedded_saes
    out = tmp_path / "out"
    assert run_graph(out, folders[1:], "--logit", "_") == 0
    err = capsys.readouterr().err
    assert "warning: no SAE for layer(s) 0" in err and "error:" not in err
    data = json.loads((out / "graph.json").read_text())
    assert data["metadata"]["info"]["missing_layers"] == [0]
    layer_0 = [n for n in data["nodes"] if n["layer"] == "0"]
    assert layer_0 and all(n["feature_type"].endswith("error") for n in layer_0)


def test_an_sae_with_nan_weights_is_refused_unless_allow_nonfinite_skips_its_features(
    embedded_saes, tmp_path, capsys
):
    import torch
    from sae_lens import SAE

    _, _, folders = embedded_saes
    damaged = SAE.load_from_disk(folders[0])
    with torch.no_grad():
        damaged.W_dec_blocks[0, 3, 0] = float("nan")  # feature 3 of head 0
    damaged.save_model(tmp_path / "damaged")
    out = tmp_path / "out"
    expect_error(
        capsys,
        out,
        run_graph(out, [str(tmp_path / "damaged"), folders[1]], "--logit", "_"),
        "NaN or inf",
        "--allow-nonfinite",
    )
    assert (
        run_graph(out, [str(tmp_path / "damaged"), folders[1]], "--logit", "_", "--allow-nonfinite")
        == 0
    )
    assert "skipped 1 of" in capsys.readouterr().out
    data = json.loads((out / "graph.json").read_text())
    assert not [n for n in data["nodes"] if n["layer"] == "0" and n["feature"] == 3]
    assert data["metadata"]["info"]["missing_layers"] == []


def test_sae_dashboard_still_pins_the_safetensors_that_keeps_circuit_tracer_out_of_our_extras():
    """circuit-tracer 0.5 needs safetensors>=0.5, sae-dashboard 0.8 <0.5: pip cannot resolve
    both, so .ci/run installs circuit-tracer with --no-deps (pyproject.toml). When this fails,
    sae-dashboard dropped the pin: make circuit-tracer an extra again."""
    from importlib.metadata import requires

    pins = [r for r in requires("sae-dashboard") if r.replace(" ", "").startswith("safetensors")]
    assert pins and "<0.5" in pins[0].replace(" ", ""), pins
    assert any("safetensors>=0.5" in r.replace(" ", "") for r in requires("circuit-tracer"))
