"""The circuit dashboard panel: registered by the built-in dashboard plugin, computes the
value-side split of each feature's top example once per prompt, and adds up exactly."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import make_tiny_model
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata

from sae_lens_attn.attribution.circuit.context import circuit_context
from sae_lens_attn.attribution.circuit.upstream import value_side_attribution
from sae_lens_attn.dashboard.circuit_panel import CircuitPanel
from sae_lens_attn.dashboard.panels import DashboardContext, FeatureReport, TopExample
from sae_lens_attn.dashboard.plugin import sae_lens_attn_dashboard_panels
from sae_lens_attn.sources.head_layout import HeadLayout


@pytest.fixture(scope="module")
def setup():
    model = make_tiny_model(seed=5)
    sae = StandardSAE(
        StandardSAEConfig(d_in=64, d_sae=32, metadata=SAEMetadata(hook_name="blocks.1.attn.hook_z"))
    )
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_(0.0, 0.3, generator=generator)
    tokens = torch.randint(1, 101, (3, 10), generator=generator)
    layout = HeadLayout.for_model(model, 1)
    context = DashboardContext(
        model=model,
        sae=sae,
        layout=layout,
        tokens=tokens,
        decode=lambda t: f"<t{t}>",
        head_labels=[f"L1H{h}" for h in range(4)],
    )
    return model, sae, tokens, context


def report(feature: int, prompt: int, dest: int) -> FeatureReport:
    example = TopExample(prompt, dest, 1.0, (), torch.zeros(dest + 1, 4), 0.0)
    return FeatureReport(feature, [example], [0.25] * 4, [0.25] * 4)


def test_circuit_panel_is_registered_by_the_builtin_dashboard_plugin():
    entries = {entry.name: entry for entry in sae_lens_attn_dashboard_panels()}
    assert isinstance(entries["circuit"].load(), CircuitPanel)


def test_circuit_panel_shows_the_value_side_split_of_each_top_example(setup):
    model, sae, tokens, context = setup
    reports = [report(3, 1, 8), report(7, 1, 5), report(9, 2, 9), FeatureReport(11, [], [], [])]
    panel = CircuitPanel()
    panel.prepare(context, reports)
    assert sorted(panel.circuits) == [3, 7, 9]
    assert panel.render(reports[3], context) is None  # no top example, no circuit data

    _, cache = model.run_with_cache(tokens)
    for feature, prompt, dest in ((3, 1, 8), (9, 2, 9)):
        output = panel.render(report(feature, prompt, dest), context)
        reference = value_side_attribution(
            circuit_context(model, sae, cache, batch=prompt), feature, dest
        )
        data = json.loads(json.dumps(output.data))  # JSON-ready
        assert data["destination"] == dest
        assert data["pre_activation"] == pytest.approx(reference.pre_activation, abs=1e-5)
        assert abs(data["closure_error"]) < 1e-4
        assert [s["source"] for s in data["top_sources"]] == reference.top_sources(3)
        # tokens are arbitrary text: escaped in the HTML
        assert "<t" not in output.html and "sla-plotly" in output.html
        assert re.search(r"\bL1H\d attends from it", output.html)  # heads read L{l}H{h}


@pytest.mark.parametrize("architecture", ["standard", "topk"])
def test_batched_panel_equals_each_feature_circuit_on_its_own(setup, architecture):
    # the panel computes a shard's circuits from one forward pass per chunk of prompts and
    # only the shown features' encoder columns; feature_circuit runs one prompt, whole SAE
    from sae_lens import TopKSAE, TopKSAEConfig

    from sae_lens_attn.attribution.circuit.feature import feature_circuit

    model, sae, tokens, context = setup
    if architecture == "topk":
        topk = TopKSAE(
            TopKSAEConfig(
                d_in=64, d_sae=32, k=6, metadata=SAEMetadata(hook_name="blocks.1.attn.hook_z")
            )
        )
        topk.load_state_dict(sae.state_dict())
        sae = topk
        context = DashboardContext(
            model=model,
            sae=sae,
            layout=context.layout,
            tokens=tokens,
            decode=context.decode,
            head_labels=context.head_labels,
        )
    wanted = [(f, f % 3, 2 + f % 8) for f in range(0, 32, 3)]  # (feature, prompt, destination)
    panel = CircuitPanel()
    panel.prompts_per_pass = 2  # two passes over the three prompts
    panel.prepare(context, [report(*w) for w in wanted])
    assert sorted(panel.circuits) == [f for f, *_ in wanted]
    for feature, prompt, dest in wanted:
        batched = panel.circuits[feature]
        alone = feature_circuit(model, sae, tokens[prompt], feature, dest, downstream=False)
        assert batched.destination == alone.destination == dest
        assert batched.top_sources == alone.top_sources
        torch.testing.assert_close(batched.value.terms, alone.value.terms, atol=1e-5, rtol=1e-5)
        assert batched.value.pre_activation == pytest.approx(alone.value.pre_activation, abs=1e-5)
        assert batched.activation == pytest.approx(alone.activation, abs=1e-5)
        assert batched.value.centring == pytest.approx(alone.value.centring, abs=1e-5)
        assert batched.query_key.head == alone.query_key.head
        torch.testing.assert_close(
            batched.query_key.matrix, alone.query_key.matrix, atol=1e-5, rtol=1e-5
        )
