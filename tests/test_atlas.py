"""The atlas: a static site of every live feature, checked in headless Chromium from
file:// with the network blocked; streaming, resume, refusal of foreign folders, and
tokens that look like markup."""

from __future__ import annotations

import base64
import gzip
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import test_dashboard
import torch
from test_dashboard import (
    CHROMIUM_FLAGS,
    IMG_TOKEN,
    SCRIPT_TOKEN,
    hostile_model,
    hostile_tokens,
    parse_dom,
    random_sae,
    run_chromium,
)

from sae_lens_attn.dashboard.atlas import AtlasConfig, build_atlas
from sae_lens_attn.dashboard.atlas import build as atlas_build
from sae_lens_attn.dashboard.atlas.site import MARKER, staging_folder
from sae_lens_attn.dashboard.render import load_panels
from sae_lens_attn.detectors.results import FamilyRow
from sae_lens_attn.errors import InvalidInputError
from sae_lens_attn.sources.head_layout import HeadLayout

chromium = test_dashboard.chromium  # the session fixture: Chromium, installed if missing
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
DEAD = 5  # a feature with a zero decoder row: left out of the atlas
CONFIG = AtlasConfig(shard_size=4)
CLICK_THIRD_ROW = (
    "<script>window.addEventListener('load', () => setTimeout(() => document.querySelector("
    "'#features tbody tr:nth-child(3) td:nth-child(2)').click(), 50));</script>"
)


def families() -> list[FamilyRow]:
    rows = [
        FamilyRow(
            "taxonomy",
            f,
            ("induction", "other", "<b>x</b>")[f % 3],
            0.5,
            {"summary": "s", "head": "L1H0"},
        )
        for f in range(16)
    ]
    return rows + [FamilyRow("logit_lens", 0, "prediction", 4.2, {"summary": "heavy right tail"})]


@pytest.fixture(scope="module")
def parts():
    model = hostile_model()
    layout = HeadLayout.for_model(model, 1)
    sae = random_sae(layout.d_in)
    layout.store_in(sae)
    with torch.no_grad():
        sae.W_dec[DEAD] = 0
        direction = sae.W_dec[0] @ model.W_O[1].flatten(0, 1)  # token 7 promoted by feature 0
        model.W_U[:, 7] = 3 * direction / direction.norm()
    return model, sae, hostile_tokens()


def build(parts, out, **kwargs):
    model, sae, tokens = parts
    return build_atlas(model, sae, tokens, out, families=families(), config=CONFIG, **kwargs)


@pytest.fixture(scope="module")
def site(parts):
    folder = ARTIFACTS / "atlas"
    shutil.rmtree(folder, ignore_errors=True)
    return build(parts, folder)


def index_data(site_folder: Path) -> dict:
    text = (site_folder / "data" / "index.js").read_text()
    assert text.startswith("slaAtlasIndex(") and text.endswith(");\n")
    return json.loads(text[len("slaAtlasIndex(") : -3])


def test_every_live_feature_is_a_row_and_dead_ones_are_left_out(site, parts):
    model, sae, tokens = parts
    rows = index_data(site.site)["rows"]
    live = atlas_build.live_features(
        model, sae, HeadLayout.from_sae(sae, model), tokens, list(range(16))
    )
    assert [row["feature"] for row in rows] == live and DEAD not in live and len(live) >= 12
    assert site.n_features == len(live) and site.left_out == 16 - len(live)
    assert {row["class"] for row in rows} == {"induction", "other", "<b>x</b>"}
    assert rows[0]["families"] == ["prediction"] and rows[0]["top_tokens"][0] == SCRIPT_TOKEN
    assert all(0 < row["density"] <= 1 and row["max_act"] > 0 for row in rows)
    shards = sorted(p.name for p in (site.site / "data").glob("features-*.js"))
    assert shards == [f"features-{k:05d}.js" for k in sorted({f // 4 for f in live})]
    assert json.loads((site.site / MARKER).read_text())["complete"] is True
    assert not staging_folder(site.site).exists()


def test_a_shard_holds_each_feature_as_compressed_json(site):
    text = (site.site / "data" / "features-00000.js").read_text()
    assert text.startswith("slaAtlasShard(") and text.endswith(");\n")
    shard = json.loads(text[len("slaAtlasShard(") : -3])
    for feature, packed in shard.items():
        raw = gzip.decompress(base64.b64decode(packed))
        entry = json.loads(raw)
        assert set(entry) == {"sae_vis", "panels", "prev", "next"}
        assert f'data-feature-key="{feature}"' in entry["panels"]
        assert len(packed) < len(raw) / 2  # the page's HTML and numbers compress well


def test_index_opens_from_file_with_rows_plots_and_markup_as_text(site, chromium, tmp_path):
    dom = parse_dom(
        run_chromium(
            chromium, site.index, tmp_path / "profile", screenshot=ARTIFACTS / "atlas-index.png"
        )
    )
    body = dom.find_all("body")[0]
    assert body.attrs["data-atlas-rows"] == str(site.n_features)
    table_rows = dom.find_all("tbody")[0].find_all("tr")
    assert len(table_rows) == site.n_features
    assert len(dom.find_all("div", id="plot-class-head")[0].find_all(cls="main-svg")) >= 1
    assert dom.find_all("div", id="plot-density")[0].find_all(cls="main-svg")
    tokens = [n.text() for n in dom.find_all("span", "tok")]
    assert SCRIPT_TOKEN in tokens and not dom.find_all("img") and not dom.find_all("b")
    classes = {tr.find_all("td")[1].text() for tr in table_rows}
    assert "<b>x</b>" in classes  # a class name that looks like markup, shown as text
    heatmap_labels = "".join(
        n.text() for n in dom.find_all("div", id="plot-class-head")[0].iter() if n.tag == "text"
    )
    assert "<b>x</b>" in heatmap_labels


def test_clicking_a_row_opens_the_feature_page_with_every_panel(site, chromium, tmp_path):
    page = site.site / "index-click.html"  # beside index.html, so relative paths resolve
    page.write_text(site.index.read_text().replace("</body>", CLICK_THIRD_ROW + "</body>"))
    try:
        dom = parse_dom(
            run_chromium(
                chromium, page, tmp_path / "profile", screenshot=ARTIFACTS / "atlas-feature.png"
            )
        )
    finally:
        page.unlink()
    third = index_data(site.site)["rows"][2]["feature"]
    assert dom.find_all("body")[0].attrs.get("data-atlas-feature") == str(third)
    panels = {p.attrs["data-panel"]: p for p in dom.find_all("div", "sla-panel")}
    assert list(panels) == [panel.name for panel in load_panels()]
    for name, panel in panels.items():
        assert len(panel.text()) > 40 or panel.find_all("svg"), name
        assert "sla-failed" not in str([n.classes() for n in panel.iter()]), name
    assert len(panels["dfa"].find_all("span", "sla-dest")) == 8
    assert panels["head_attribution"].find_all(cls="main-svg")
    # sae_dashboard's own view, drawn from the shard's data
    assert dom.find_all("div", id="histogram-acts-0")[0].find_all(cls="main-svg")
    assert len(dom.find_all("span", "token")) > 50
    assert not dom.find_all("img") and "data-pwned" not in dom.find_all("body")[0].attrs


def test_feature_page_shows_markup_tokens_as_text(site, chromium, tmp_path):
    url_page = site.site / "feature.html"
    args = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom",
        url_page.resolve().as_uri() + "#0",
    ]
    dom = parse_dom(subprocess.run(args, capture_output=True, text=True, timeout=60).stdout)
    assert dom.find_all("body")[0].attrs.get("data-atlas-feature") == "0"
    cells = [td.text() for td in dom.find_all("td")]
    assert SCRIPT_TOKEN in cells and IMG_TOKEN not in [n.attrs.get("src") for n in dom.iter()]
    scripts = dom.find_all("script")  # d3, plotly, sae_dashboard's, ours, the shard: no other
    assert not dom.find_all("img") and len(scripts) == 5
    assert sorted(s.attrs["src"] for s in scripts if "src" in s.attrs) == [
        "d3.v6.min.js",
        "data/features-00000.js",
        "plotly.min.js",
    ]


def test_generation_streams_one_shard_at_a_time(parts, tmp_path, monkeypatch):
    """Each sae_dashboard run gets one shard's features, and every earlier shard is on
    disk before the next is computed: memory holds one shard, not the atlas."""
    from sae_lens_attn.dashboard import sae_vis

    calls = []
    copies, passes = set(), set()
    original = sae_vis.run_sae_vis

    def recording(model, sae, layout, tokens, features, config, dense, activations):
        staging = staging_folder(tmp_path / "site")
        calls.append(
            (list(features), sorted(p.name for p in (staging / "data").glob("rows-*.json")))
        )
        copies.add(id(dense))  # one dashboard copy of the SAE for the whole run
        passes.add(id(activations))  # and one model pass over the prompts
        return original(
            model, sae, layout, tokens, features, config, dense=dense, activations=activations
        )

    monkeypatch.setattr(sae_vis, "run_sae_vis", recording)
    build(parts, tmp_path / "site", panels=["families"])
    assert [max(f) // 4 == min(f) // 4 and len(f) <= 4 for f, _ in calls] == [True] * len(calls)
    assert [len(done) for _, done in calls] == list(range(len(calls)))
    assert len(calls) > 1 and len(copies) == 1 and len(passes) == 1


def test_a_killed_run_resumes_where_it_stopped(parts, site, tmp_path, monkeypatch):
    out = tmp_path / "site"
    computed, original = [], atlas_build._write_shard

    def dies_on_third(staging, shard, *args):
        if len(computed) == 2:
            raise KeyboardInterrupt
        computed.append(shard)
        return original(staging, shard, *args)

    monkeypatch.setattr(atlas_build, "_write_shard", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        build(parts, out)
    assert not out.exists() and len(list((staging_folder(out) / "data").glob("rows-*"))) == 2

    monkeypatch.setattr(
        atlas_build, "_write_shard", lambda *a: (computed.append(a[1]), original(*a))
    )
    files = build(parts, out, resume=True)
    assert files.resumed and len(computed) == len(set(computed))  # nothing computed twice
    assert index_data(out) == index_data(site.site)
    for shard in (site.site / "data").glob("features-*.js"):
        assert (out / "data" / shard.name).read_bytes() == shard.read_bytes()


def test_a_damaged_shard_is_found_by_its_checksum_and_rebuilt_on_resume(
    parts, site, tmp_path, monkeypatch
):
    out = tmp_path / "site"
    original = atlas_build._write_shard

    def dies_on_third(staging, shard, *args):
        if len(list((staging / "data").glob("rows-*"))) == 2:
            raise KeyboardInterrupt
        return original(staging, shard, *args)

    monkeypatch.setattr(atlas_build, "_write_shard", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        build(parts, out)
    staging = staging_folder(out)
    recorded = json.loads((staging / MARKER).read_text())["shards"]
    assert sorted(recorded) == ["0", "1"]  # the manifest: every finished shard's checksums
    damaged = staging / "data" / "features-00000.js"
    damaged.write_bytes(damaged.read_bytes()[:-40] + b"x" * 40)  # same size, other bytes

    computed = []
    monkeypatch.setattr(
        atlas_build, "_write_shard", lambda *a: (computed.append(a[1]), original(*a))
    )
    with pytest.warns(UserWarning, match=r"shard 0's files do not match the checksums"):
        files = build(parts, out, resume=True)
    assert computed[0] == 0 and 1 not in computed  # shard 0 again, shard 1 kept
    assert files.resumed and index_data(out) == index_data(site.site)
    for shard in (site.site / "data").glob("features-*.js"):
        assert (out / "data" / shard.name).read_bytes() == shard.read_bytes()
    published = json.loads((out / MARKER).read_text())["shards"]
    assert published == json.loads((site.site / MARKER).read_text())["shards"]


def test_features_beyond_d_sae_are_one_error_line(embedded_sae, tmp_path, capsys):
    from sae_lens_attn import cli

    code = cli.main(
        ["atlas", "--sae", str(embedded_sae), "--out", str(tmp_path / "site"), "--features", "3,12"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --features: feature 12 is out of range; this SAE has features 0..11"]
    assert not (tmp_path / "site").exists()


def test_resume_with_other_settings_is_refused(parts, tmp_path, monkeypatch):
    monkeypatch.setattr(
        atlas_build, "_write_shard", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt)
    )
    with pytest.raises(KeyboardInterrupt):
        build(parts, tmp_path / "site")
    model, sae, tokens = parts
    with pytest.raises(
        InvalidInputError, match=r"--resume: the unfinished atlas .* \(tokens differ\)"
    ):
        build_atlas(
            model,
            sae,
            tokens[:10],
            tmp_path / "site",
            families=families(),
            config=CONFIG,
            resume=True,
        )


def test_a_folder_that_is_not_an_atlas_is_refused_and_untouched(parts, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidInputError, match="exists and is not an atlas"):
        build(parts, tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    assert not staging_folder(tmp_path / "mine").exists()


def test_an_earlier_atlas_is_replaced_whole(parts, tmp_path):
    out = tmp_path / "site"
    build(parts, out, features=range(8), panels=["families"])
    (out / "data" / "stale.js").write_text("old")
    files = build(parts, out, features=[0, 1, 2], panels=["families"])
    assert files.n_features == 3 and [r["feature"] for r in index_data(out)["rows"]] == [0, 1, 2]
    assert not (out / "data" / "stale.js").exists()


@pytest.fixture(scope="module")
def embedded_sae(tmp_path_factory):
    """A random dense SAE on the embedded model's blocks.1.attn.hook_z, saved."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    folder = tmp_path_factory.mktemp("embedded_sae") / "sae"
    sae = StandardSAE(
        StandardSAEConfig(
            d_in=128, d_sae=12, metadata=SAEMetadata(hook_name="blocks.1.attn.hook_z")
        )
    )
    torch.manual_seed(0)
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.W_dec.normal_(0, 0.3)
    sae.save_model(folder)
    return folder


def test_cli_writes_an_atlas_that_serve_serves(embedded_sae, tmp_path, capsys):
    from sae_lens_attn import cli

    site_folder = tmp_path / "site"
    assert (
        cli.main(
            [
                "atlas",
                "--sae",
                str(embedded_sae),
                "--out",
                str(site_folder),
                "--n-prompts",
                "16",
                "--context-size",
                "32",
                "--detectors",
                "none",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert f"wrote {site_folder}" in capsys.readouterr().out
    data = index_data(site_folder)
    assert data["rows"] and "No detectors ran" in data["classes_note"]
    server = subprocess.Popen(
        [sys.executable, "-m", "sae_lens_attn", "serve", str(site_folder), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as response:
            assert b"slaAtlasIndex" in response.read()
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_serve_refuses_a_folder_that_is_not_a_finished_atlas(tmp_path, capsys):
    from sae_lens_attn import cli

    assert cli.main(["serve", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path}: not a finished atlas")
