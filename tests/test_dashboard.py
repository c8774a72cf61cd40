"""Dashboards: sae_dashboard's page with our panels, checked in headless Chromium with the
network blocked; tokens that look like markup must render as text."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model
from sae_lens import StandardSAE, StandardSAEConfig
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from sae_lens_attn.architectures.block_diagonal import BlockDiagonalSAE, BlockDiagonalSAEConfig
from sae_lens_attn.dashboard import DashboardPanel, load_panels, render_dashboard
from sae_lens_attn.dashboard.sae_vis import full_width_dense_copy, tidy_ticks
from sae_lens_attn.detectors.results import FamilyRow
from sae_lens_attn.sources.head_layout import HeadLayout

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SCRIPT_TOKEN = "<script>alert(1)</script>"
IMG_TOKEN = "\"><img src=x onerror=document.body.setAttribute('data-pwned',1)>"
FEATURES = [0, 1, 2]
LONG_EVIDENCE = "no enriched token set (largest ES 0.16: starts_with_space); " * 6
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=4000",
    # no network at all: every request goes to a closed local port, names do not resolve
    "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]
# for a page served on 127.0.0.1: that address alone is reachable, directly
LOOPBACK_FLAGS = [
    *(f for f in CHROMIUM_FLAGS if not f.startswith(("--proxy-bypass", "--host-resolver"))),
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


# ---------------------------------------------------------------- a minimal DOM parser


@dataclass
class Node:
    tag: str
    attrs: dict[str, str | None]
    children: list = field(default_factory=list)

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        return [
            node for node in self.iter()
            if (tag is None or node.tag == tag)
            and (cls is None or cls in node.classes())
            and all(node.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]


class _TreeBuilder(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, dict(attrs)))

    def handle_endtag(self, tag):
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse_dom(text: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(text)
    return builder.root


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and possible, else skip."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("Chromium is not installed and cannot be installed here (needs root and "
                    "apt-get); install Debian's `chromium` package to run the browser tests")
    for command in (["apt-get", "install", "-y", "chromium"], ["apt-get", "update"],
                    ["apt-get", "install", "-y", "chromium"]):
        result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if command[1] == "install" and result.returncode == 0:
            break
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"Chromium could not be installed with apt-get: {result.stderr[-300:]}")
    return found


def run_chromium(
    chromium: str,
    page: Path | str,
    profile: Path,
    screenshot: Path | None = None,
    width: int = 1600,
) -> str:
    """The DOM of `page` (a file, or a URL on the loopback interface) after its scripts ran
    (and a screenshot), with no network, in a window `width` px wide."""
    flags = LOOPBACK_FLAGS if isinstance(page, str) else CHROMIUM_FLAGS
    args = [chromium, *flags, f"--window-size={width},1900", f"--user-data-dir={profile}",
            "--dump-dom"]
    if screenshot is not None:
        args.append(f"--screenshot={screenshot}")
    url = page if isinstance(page, str) else page.resolve().as_uri()
    result = subprocess.run([*args, url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def hostile_model():
    """tiny_model's weights with a word-level vocabulary in which tokens 7, 8 and 9 are
    markup and whitespace; token 7 is the one feature 0 promotes most, 8 the one it
    suppresses most (so they also reach the logit tables and tooltips)."""
    model = make_tiny_model()
    vocab = {f"w{i}": i for i in range(101) if i not in (7, 8, 9)}
    vocab.update({SCRIPT_TOKEN: 7, IMG_TOKEN: 8, " two words\n": 9})
    model.tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="w0")))
    return model


def random_sae(d_in: int, d_sae: int = 16, seed: int = 0) -> StandardSAE:
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in (sae.W_enc, sae.W_dec):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        sae.b_enc.copy_(torch.randn(d_sae, generator=generator) * 0.1)
        sae.b_dec.copy_(torch.randn(d_in, generator=generator) * 0.1)
    return sae


def hostile_tokens() -> torch.Tensor:
    tokens = torch.randint(10, 101, (48, 32), generator=torch.Generator().manual_seed(0))
    tokens[:, 3], tokens[:, 9], tokens[:, 12] = 7, 8, 9
    return tokens


@dataclass
class Rendered:
    html: Path
    json: Path
    features: dict
    model: object
    sae: StandardSAE


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    model = hostile_model()
    layout = HeadLayout.for_model(model, 1)
    sae = random_sae(layout.d_in)
    layout.store_in(sae)
    with torch.no_grad():  # tokens 7 and 8: the most promoted / suppressed by feature 0
        direction = sae.W_dec[0] @ model.W_O[1].flatten(0, 1)
        model.W_U[:, 7] = 3 * direction / direction.norm()
        model.W_U[:, 8] = -3 * direction / direction.norm()
    families = [
        FamilyRow("induction", f, "induction" if f == 0 else None, 0.9 - 0.3 * f,
                  {"summary": f"<b>score</b> {0.9 - 0.3 * f:.1f}"})
        for f in FEATURES
    ] + [FamilyRow("logit_lens", 0, "prediction", 4.2, {"summary": "heavy right tail"}),
         FamilyRow("enrichment", 0, None, 0.1, {"summary": LONG_EVIDENCE})]
    files = render_dashboard(
        model, sae, hostile_tokens(), FEATURES, ARTIFACTS / "dashboard", families=families
    )
    return Rendered(files.html, files.json, json.loads(files.json.read_text()), model, sae)


@pytest.fixture(scope="module")
def dom(rendered, chromium, tmp_path_factory) -> Node:
    text = run_chromium(chromium, rendered.html, tmp_path_factory.mktemp("chromium-profile"),
                        screenshot=ARTIFACTS / "dashboard.png")
    return parse_dom(text)


# ---------------------------------------------------------------- tests


def test_dashboard_in_chromium_offline_shows_every_panel_with_content(dom):
    (visible,) = [s for s in dom.find_all("section", "sla-feature") if "hidden" not in s.attrs]
    assert visible.attrs["data-feature-key"] == "0"
    panels = {p.attrs["data-panel"]: p for p in visible.find_all("div", "sla-panel")}
    installed = [panel.name for panel in load_panels()]  # ours and any plugin's (circuit)
    assert list(panels) == installed and {"dfa", "head_attribution", "logit_lens", "families"} <= set(installed)
    for name, panel in panels.items():  # a title and real content, not a failure note
        assert len(panel.text()) > 40 + len(panel.find_all("h3")[0].text()) or panel.find_all("svg"), name
        assert "sla-failed" not in str([n.classes() for n in panel.iter()]), name

    tokens = panels["dfa"].find_all("span", "sla-tok")
    assert len(tokens) > 20 and all(t.attrs["data-tip"].count("L1H") == 4 for t in tokens)
    top_group = [g for g in dom.find_all("div", "seq-group") if g.text().startswith("TOP ACTIVATIONS")]
    shown = len(top_group[0].find_all("div", "seq"))  # sae_dashboard's top examples
    assert shown == 8 and len(panels["dfa"].find_all("span", "sla-dest")) == shown
    assert panels["head_attribution"].find_all(cls="main-svg")  # plotly drew the bars offline
    cells = [td.text() for td in panels["logit_lens"].find_all("td")]
    assert {"std", "skewness", "kurtosis", "class", "prediction", SCRIPT_TOKEN, IMG_TOKEN} <= set(cells)
    rows = [[td.text() for td in tr.find_all("td")] for tr in panels["families"].find_all("tr")[1:]]
    assert rows == [
        ["enrichment", "not a member", "0.100", LONG_EVIDENCE],
        ["induction", "induction", "0.900", "<b>score</b> 0.9"],
        ["logit_lens", "prediction", "4.200", "heavy right tail"],
    ]
    # sae_dashboard's own view, drawn with the inlined d3 and plotly
    assert dom.find_all("div", id="histogram-acts-0")[0].find_all(cls="main-svg")
    assert len(dom.find_all("span", "token")) > 50
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 50_000


def test_tokens_that_look_like_markup_render_as_text_never_as_markup(dom, rendered):
    assert not dom.find_all("img") and not any("onerror" in n.attrs for n in dom.iter())
    assert "data-pwned" not in dom.find_all("body")[0].attrs
    assert len(dom.find_all("script")) == 4  # d3, plotly, sae_dashboard's, ours
    shown = [n.text() for n in dom.iter() if n.classes() & {"sla-tok", "token", "sla-token"}]
    assert SCRIPT_TOKEN in shown and IMG_TOKEN in shown and " two words↵" in shown
    tooltip_code = [n.text() for n in dom.find_all("code")]  # sae_dashboard's tooltips + tables
    assert SCRIPT_TOKEN in tooltip_code and IMG_TOKEN in tooltip_code
    assert not re.search(r"<script[^>]*\bsrc=", rendered.html.read_text())  # nothing fetched


def test_choosing_another_feature_in_the_dropdown_shows_its_panels(rendered, chromium, tmp_path):
    page = tmp_path / "switch.html"
    choose_feature_2 = (
        "<script>document.addEventListener('DOMContentLoaded', () => setTimeout(() => {"
        "const s = document.querySelector('#dropdown-container select'); s.value = '2';"
        "s.dispatchEvent(new Event('change', {bubbles: true}));}, 0));</script>"
    )
    page.write_text(rendered.html.read_text().replace("</body>", choose_feature_2 + "</body>"))
    dom = parse_dom(run_chromium(chromium, page, tmp_path / "profile"))
    sections = {s.attrs["data-feature-key"]: s for s in dom.find_all("section", "sla-feature")}
    assert ["hidden" in sections[k].attrs for k in ("0", "1", "2")] == [True, True, False]
    assert sections["2"].find_all(cls="main-svg")


MEASURE_LAYOUT = """<script>
document.addEventListener('DOMContentLoaded', () => setTimeout(() => {
    const width = document.documentElement.clientWidth, problems = [];
    const name = el => el.id || el.dataset.panel || el.className || el.tagName;
    if (document.documentElement.scrollWidth > width + 1)
        problems.push('page scrolls sideways to ' + document.documentElement.scrollWidth + ' px');
    document.querySelectorAll('.grid-column, .sla-panel, .seq-group, .sla-feature:not([hidden]) table')
        .forEach(el => {
            const box = el.getBoundingClientRect();
            if (box.width > 0 && box.right > width + 1)
                problems.push(name(el) + ' ends at ' + Math.round(box.right) + ' px');
        });
    document.querySelectorAll('.grid-container, .grid-column, .sla-panel, .sla-tokens').forEach(el => {
        if (el.offsetParent !== null && el.scrollWidth > el.clientWidth + 1)
            problems.push(name(el) + ' clips ' + (el.scrollWidth - el.clientWidth) + ' px');
    });
    document.body.setAttribute('data-layout', JSON.stringify({width, problems}));
}, 200));
</script>"""


@pytest.mark.parametrize("width", [1280, 1920])
def test_dashboard_fits_the_window_with_no_clipped_column(rendered, chromium, tmp_path, width):
    """Headless Chromium at 1280 and 1920 px: nothing runs past the window's right edge or
    is clipped inside a column or panel (long tokens wrap). Screenshots in test-artifacts/."""
    page = tmp_path / "measured.html"
    page.write_text(rendered.html.read_text().replace("</body>", MEASURE_LAYOUT + "</body>"))
    shot = ARTIFACTS / f"dashboard-{width}.png"
    dom = parse_dom(run_chromium(chromium, page, tmp_path / "profile", screenshot=shot, width=width))
    layout = json.loads(dom.find_all("body")[0].attrs["data-layout"])
    assert layout["width"] > width - 40
    assert layout["problems"] == []
    assert shot.stat().st_size > 50_000


def test_features_json_has_neuronpedia_dfa_fields_that_add_up_to_the_activation(rendered):
    assert [f["feature_index"] for f in rendered.features["features"]] == FEATURES
    for feature in rendered.features["features"]:
        heads = feature["head_attribution"]
        assert sum(heads["decoder_weights_dist"]) == pytest.approx(1, abs=1e-3)
        for example in feature["dfa"]["examples"]:
            values = example["dfa_values"]
            assert len(values) == example["dfa_targetIndex"] + 1 == len(example["tokens"])
            assert example["dfa_maxValue"] == max(values)
            by_head = torch.tensor(example["dfa_values_by_head"])
            assert by_head.shape == (len(values), 4)
            torch.testing.assert_close(by_head.sum(1), torch.tensor(values), atol=5e-4, rtol=0)
            pre = sum(values) + example["bias_terms"]
            assert pre == pytest.approx(example["pre_activation"], abs=2e-3)
            if example["activation"] > 0:  # ReLU: the activation sae_dashboard shows
                assert pre == pytest.approx(example["activation"], abs=2e-3)
    lens = rendered.features["features"][0]["logit_lens"]
    assert lens["top_tokens"][0]["token"] == SCRIPT_TOKEN and lens["class"] == "prediction"
    assert lens["bottom_tokens"][0]["token"] == IMG_TOKEN


def test_one_scale_per_page_sae_dashboard_dfa_and_circuit_agree_with_the_sae_as_given(rendered):
    """sae_dashboard's activation of each shown example (the DFA panel carries it), the DFA
    terms and the circuit panel's numbers are all activations of the SAE as given."""
    assert not torch.allclose(rendered.sae.W_dec.norm(dim=1), torch.ones(16))  # a fold would show
    _, cache = rendered.model.run_with_cache(hostile_tokens(), names_filter="blocks.1.attn.hook_z")
    acts = rendered.sae.encode(cache["blocks.1.attn.hook_z"].flatten(-2)).detach()
    checked = 0
    for record in rendered.features["features"]:
        examples = record["dfa"]["examples"]
        for example in examples:
            expected = float(acts[example["prompt_index"], example["dfa_targetIndex"], record["feature_index"]])
            assert example["activation"] == pytest.approx(expected, abs=1e-3)
        circuit = record.get("circuit")
        if circuit is not None:
            assert circuit["destination"] == examples[0]["dfa_targetIndex"]
            assert circuit["activation"] == pytest.approx(examples[0]["activation"], abs=1e-3)
            assert circuit["pre_activation"] == pytest.approx(examples[0]["pre_activation"], abs=1e-3)
            checked += 1
    assert checked == len(FEATURES)
    assert "activation of the SAE as given" in rendered.html.read_text()


def test_logit_lens_panel_shows_the_statistics_the_logit_lens_detector_classifies(rendered):
    from sae_lens_attn.detectors.logit_lens_classes import LogitLensClassDetector

    rows = LogitLensClassDetector().detect(rendered.model, rendered.sae, features=FEATURES)
    for row, feature in zip(rows, rendered.features["features"], strict=True):
        lens = feature["logit_lens"]
        for key in ("std", "skewness", "kurtosis"):
            assert lens[key] == pytest.approx(row.evidence[key], abs=1e-3)
        assert [t["id"] for t in lens["top_tokens"][:5]] == row.evidence["top_tokens"]


def test_page_size_stays_reasonable(rendered):
    size = rendered.html.stat().st_size
    assert size < 6.5e6, f"{size / 1e6:.1f} MB for {len(FEATURES)} features"


class _BrokenPanel(DashboardPanel):
    name, title = "broken", "Broken"

    def render(self, report, context):
        raise RuntimeError("no data for <this> panel")


def test_failing_panel_is_reported_in_its_box_and_the_page_is_still_written(tmp_path):
    model = hostile_model()
    layout = HeadLayout.for_model(model, 1)
    sae = random_sae(layout.d_in)
    with pytest.warns(UserWarning, match="panel 'broken' failed on feature 3"):
        files = render_dashboard(
            model, sae, hostile_tokens()[:16], [3], tmp_path, layout=layout,
            panels=["families", _BrokenPanel()],
        )
    page = files.html.read_text()
    assert "This panel failed: RuntimeError(&#x27;no data for &lt;this&gt; panel&#x27;)" in page
    assert "No detector results were given" in page
    assert json.loads(files.json.read_text())["features"][0]["broken"] is None


@pytest.mark.parametrize("activation", ["relu", "topk"])
def test_block_diagonal_dashboard_shows_the_sae_activations_and_one_head_per_feature(
    tmp_path, tiny_model, tiny_tokens, activation
):
    layout = HeadLayout.for_model(tiny_model, 1)
    sae = BlockDiagonalSAE(BlockDiagonalSAEConfig(
        d_in=64, d_sae=32, n_heads=4, activation=activation, k=2 if activation == "topk" else None
    ))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in sae.parameters():
            param.normal_(0.0, 0.3, generator=generator)
    layout.store_in(sae)
    features = [1, 9, 30]  # heads 0, 1, 3
    files = render_dashboard(tiny_model, sae, tiny_tokens, features, tmp_path,
                             panels=["dfa", "head_attribution"])
    _, cache = tiny_model.run_with_cache(tiny_tokens, names_filter="blocks.1.attn.hook_z")
    acts = sae.encode(cache["blocks.1.attn.hook_z"].flatten(-2)).detach()
    assert not torch.allclose(sae.W_dec_blocks.norm(dim=-1), torch.ones(4, 8))  # a fold would show
    fired = 0
    for record in json.loads(files.json.read_text())["features"]:
        feature, owner = record["feature_index"], record["feature_index"] // 8
        assert record["head_attribution"]["decoder_weights_dist"] == [float(h == owner) for h in range(4)]
        assert record["dfa"]["examples"]
        for example in record["dfa"]["examples"]:
            expected = acts[example["prompt_index"], example["dfa_targetIndex"], feature]
            assert example["activation"] == pytest.approx(float(expected), abs=1e-3)
            if example["activation"] > 0:
                fired += 1
                assert example["pre_activation"] == pytest.approx(example["activation"], abs=1e-3)
            by_head = torch.tensor(example["dfa_values_by_head"])
            assert torch.all(by_head[:, [h for h in range(4) if h != owner]] == 0)
    assert fired >= 5


def test_full_width_copy_has_the_same_activations_for_a_subset_of_heads(tiny_model, tiny_tokens):
    layout = HeadLayout.for_model(tiny_model, 1, heads=[3, 1])
    sae = random_sae(layout.d_in)
    _, cache = tiny_model.run_with_cache(tiny_tokens, names_filter="blocks.1.attn.hook_z")
    z = cache["blocks.1.attn.hook_z"]
    wide = full_width_dense_copy(sae, layout)
    assert wide.cfg.d_in == 64 and sae.cfg.d_in == 32
    torch.testing.assert_close(wide.encode(z.flatten(-2)), sae.encode(layout.select(z)))


def test_sae_dashboard_tick_bug_is_still_there_and_tidy_ticks_fixes_it():
    """Pins the upstream bug `tidy_ticks` works around: on data spanning less than 0.3,
    sae_dashboard 0.8 emits one histogram tick per 1e-6."""
    from sae_dashboard.components import LogitsHistogramData
    from sae_dashboard.feature_data import FeatureData
    from sae_dashboard.sae_vis_data import SaeVisConfig, SaeVisData

    data = torch.linspace(-0.12, 0.2, 500)
    hist = LogitsHistogramData.from_data(data=data, n_bins=40, tickmode="5 ticks", title=None)
    assert len(hist.tick_vals) > 100_000
    vis = SaeVisData(cfg=SaeVisConfig(hook_point="blocks.0.attn.hook_z", features=[0]))
    vis.feature_data_dict[0] = FeatureData(logits_histogram_data=hist)
    tidy_ticks(vis)
    ticks = vis.feature_data_dict[0].logits_histogram_data.tick_vals
    assert 3 <= len(ticks) <= 7 and ticks[0] <= -0.11 and ticks[-1] >= 0.19 and 0.0 in ticks
