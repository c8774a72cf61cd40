"""The package's shape, read from its source with `ast` (nothing is imported): no file
imports a file that imports it back, and imports only point down the layers that
docs/architecture.md draws. Every import counts, also those under `TYPE_CHECKING` and inside
functions, since each is a dependency a reader has to follow. The walker lives in the docs
hook that draws the picture (docs/hooks/architecture.py), so picture and test agree."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("architecture", ROOT / "docs/hooks/architecture.py")
architecture = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(architecture)


def test_the_walker_sees_known_imports():
    graph = architecture.import_graph()
    assert "sae_lens_attn.sources.head_layout" in graph["sae_lens_attn.sources.hook_z"]
    assert "sae_lens_attn.training.parallel.base" in graph["sae_lens_attn.training.parallel.data"]
    # an import under TYPE_CHECKING counts as much as one at the top
    assert "sae_lens_attn.sources.store" in graph["sae_lens_attn.training.parallel.base"]


def test_the_walker_finds_a_planted_cycle(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    (package / "c.py").write_text("import pkg.a\n")
    graph = architecture.import_graph(package)
    assert architecture.cycles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_the_walker_finds_a_planted_upward_import(tmp_path):
    package = tmp_path / "pkg"
    for name in ("top", "low"):
        (package / name).mkdir(parents=True)
        (package / name / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "top" / "page.py").write_text("from pkg.low import tool\n")
    # the upward arrow hides inside a function, as the atlas's import of the demo did
    (package / "low" / "tool.py").write_text("def f():\n    from pkg.top import page\n")
    graph = architecture.import_graph(package)
    rows = (("top",), ("low",))
    # `from pkg.top import page` imports the package pkg.top and its module page
    assert architecture.upward_imports(graph, rows) == [
        "pkg.low.tool -> pkg.top",
        "pkg.low.tool -> pkg.top.page",
    ]
    assert architecture.upward_imports(graph, rows[::-1]) == [
        "pkg.top.page -> pkg.low",
        "pkg.top.page -> pkg.low.tool",
    ]


def test_demo_sits_above_the_dashboard_it_imports():
    # one order for the test and the picture: the demo renders dashboards, so the dashboard
    # (and the atlas in it) may not import the demo
    assert architecture.LAYERS["demo"] > architecture.LAYERS["dashboard"]
    assert architecture.LAYERS["dashboard"] > architecture.LAYERS["detectors"]


def test_no_file_imports_a_file_that_imports_it_back():
    found = architecture.cycles(architecture.import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_imports_point_down_the_layers():
    upward = architecture.upward_imports(architecture.import_graph())
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_every_room_is_in_the_picture():
    rooms = {p.parent.name for p in architecture.PACKAGE.glob("*/__init__.py")}
    assert rooms <= set(architecture.LAYERS), rooms - set(architecture.LAYERS)


def test_the_picture_has_an_arrow_per_room_edge():
    edges = architecture.room_edges(architecture.import_graph())
    svg = architecture.diagram_svg(edges)
    assert ("detectors", "attribution") in edges
    assert svg.count("marker-end=") == len(edges)
    for source, target in edges:
        assert f"<title>{source} imports {target}</title>" in svg


@pytest.mark.parametrize(
    "folder", sorted(p.parent.name for p in (ROOT / "sae_lens_attn").rglob("*/__init__.py"))
)
def test_every_room_says_what_it_is_for(folder):
    init = next((ROOT / "sae_lens_attn").rglob(f"{folder}/__init__.py"))
    docstring = ast.get_docstring(ast.parse(init.read_text()))
    assert docstring and len(docstring.split()) >= 8, (
        f"{init} needs a docstring saying what it is for"
    )


def test_sources_holds_only_activation_sources():
    modules = {p.stem for p in (ROOT / "sae_lens_attn" / "sources").glob("*.py")}
    training = {"runner", "trainer", "checkpoints", "evaluation", "parallel", "training", "outputs"}
    assert not modules & training, modules & training


def test_moved_training_names_still_import_from_sources_with_a_warning():
    import sae_lens_attn.sources as sources
    import sae_lens_attn.training as training

    with pytest.warns(DeprecationWarning, match="sae_lens_attn.training"):
        moved = sources.train_hook_z_sae
    assert moved is training.train_hook_z_sae
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        sources.nonexistent  # noqa: B018


def test_moved_modules_keep_their_public_names_importable():
    from sae_lens_attn.attribution.circuit import FeatureCircuit, feature_circuit
    from sae_lens_attn.attribution.circuit.feature import FeatureCircuit as defined
    from sae_lens_attn.demo.activity import feature_activity as demo_activity
    from sae_lens_attn.demo.pipeline import DemoResult
    from sae_lens_attn.demo.result import DemoResult as result_class
    from sae_lens_attn.detectors.activity import feature_activity
    from sae_lens_attn.detectors.classes import CLASSES, FamilyRow
    from sae_lens_attn.detectors.results import FamilyRow as results_row
    from sae_lens_attn.detectors.taxonomy import CLASSES as taxonomy_classes

    assert FeatureCircuit is defined and callable(feature_circuit)
    assert DemoResult is result_class and FamilyRow is results_row
    assert CLASSES == taxonomy_classes
    assert demo_activity is feature_activity
