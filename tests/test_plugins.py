"""The plugin system: entry points, third-party plugins, broken plugins, cheap start-up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sae_lens_attn.plugins import PluginEntry, PluginManager, hookimpl

GOOD_PLUGIN = '''
from sae_lens_attn.plugins import PluginEntry, hookimpl


def find_nothing(model, sae, **options):
    return []


@hookimpl
def sae_lens_attn_detectors():
    return [PluginEntry("nothing", "an example detector that finds nothing", load=lambda: find_nothing)]
'''

BROKEN_PLUGIN = "import a_module_that_does_not_exist_anywhere\n"


def write_plugin_package(root: Path, module: str, source: str) -> Path:
    """A minimal installable package declaring `module` in the sae_lens_attn group."""
    package = root / module
    package.mkdir()
    (package / f"{module}.py").write_text(source)
    (package / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{module.replace('_', '-')}"
        version = "0.0.1"

        [tool.setuptools]
        py-modules = ["{module}"]

        [project.entry-points.sae_lens_attn]
        {module} = "{module}"
    """))
    return package


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """A folder with a good and a broken third-party plugin installed by pip."""
    root = tmp_path_factory.mktemp("plugins")
    site = root / "site"
    for module, source in [("my_attn_plugin", GOOD_PLUGIN), ("broken_attn_plugin", BROKEN_PLUGIN)]:
        package = write_plugin_package(root, module, source)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
             "--no-build-isolation", "--no-index", "--target", str(site), str(package)],
            check=True, capture_output=True,
        )
    return site


def run_with_site(site: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run Python with `site` first on the path (the package under test stays importable)."""
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          check=check)


def test_builtin_plugins_are_entry_points():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="sae_lens_attn")}
    values = {ep.value for ep in entry_points(group="sae_lens_attn")}
    assert names, "no built-in plugin declared in pyproject.toml"
    assert all(value.startswith("sae_lens_attn.") for value in values)


def test_third_party_plugin_is_listed_and_broken_one_reported(plugin_site):
    result = run_with_site(plugin_site, "-m", "sae_lens_attn.cli", "plugins", check=False)
    assert result.returncode == 1
    listed = [line.split(None, 3) for line in result.stdout.splitlines()]
    assert ["detector", "nothing", "my_attn_plugin",
            "an example detector that finds nothing"] in listed
    assert result.stderr.splitlines() == [
        "error: plugin 'broken_attn_plugin (broken-attn-plugin)': failed to load "
        "(broken_attn_plugin): ModuleNotFoundError(\"No module named "
        "'a_module_that_does_not_exist_anywhere'\")"
    ]


def test_third_party_detector_loads_through_manager(plugin_site):
    code = ("from sae_lens_attn.plugins import get_plugin_manager as g; "
            "print(g().get('detector', 'nothing')(None, None))")
    assert run_with_site(plugin_site, "-W", "ignore", "-c", code).stdout.strip() == "[]"


class _Twice:
    @hookimpl
    def sae_lens_attn_detectors(self):
        return [PluginEntry("same", "first", load=lambda: 1)]


class _Again:
    @hookimpl
    def sae_lens_attn_detectors(self):
        return [PluginEntry("same", "second", load=lambda: 2)]


class _Raises:
    @hookimpl
    def sae_lens_attn_detectors(self):
        raise RuntimeError("boom")


def test_name_clash_keeps_first_and_raising_hook_is_reported():
    manager = PluginManager()
    manager.register(_Twice(), name="a")
    manager.register(_Raises(), name="b")
    manager.register(_Again(), name="c")
    with pytest.warns(UserWarning) as warned:
        entries = manager.entries("detector")
    assert [(e.plugin, e.entry.description) for e in entries] == [("a", "first")]
    assert manager.get("detector", "same") == 1
    messages = " ".join(str(w.message) for w in warned)
    assert "'b' hook sae_lens_attn_detectors raised RuntimeError('boom')" in messages
    assert "plugin 'c' detector 'same' clashes with detector 'same' of plugin 'a'" in messages


def test_unknown_names_list_valid_choices():
    manager = PluginManager()
    manager.register(_Twice(), name="a")
    with pytest.raises(ValueError, match="unknown detector 'nope': available: same"):
        manager.get("detector", "nope")
    with pytest.raises(ValueError, match="unknown plugin kind 'widgets'"):
        manager.entries("widgets")


def test_interpreter_start_imports_neither_torch_nor_sae_lens():
    code = "import sys; print(sorted(m for m in ('torch', 'sae_lens', 'pluggy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    code = "import sys; print(any(type(f).__name__ == 'SAELensImportWatcher' for f in sys.meta_path))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True", "sae_lens_attn.pth is not installed"


def test_no_autoload_switch_disables_the_watcher():
    code = "import sys; print([type(f).__name__ for f in sys.meta_path])"
    env = {**os.environ, "SAE_LENS_ATTN_NO_AUTOLOAD": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, env=env)
    assert "SAELensImportWatcher" not in result.stdout


def test_registration_is_idempotent():
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    from sae_lens_attn.plugins import register_architectures_with_sae_lens

    before = dict(SAE_CLASS_REGISTRY)
    first = register_architectures_with_sae_lens()
    second = register_architectures_with_sae_lens()
    assert first == second
    assert set(first) <= set(SAE_TRAINING_CLASS_REGISTRY)
    # block_diagonal_batchtopk trains only: it saves as block_diagonal_jumprelu
    assert set(first) - set(SAE_CLASS_REGISTRY) == {"block_diagonal_batchtopk"}
    assert {k: v for k, v in SAE_CLASS_REGISTRY.items() if k in before} == before


def test_sae_lens_cli_offers_block_diagonal_without_our_import():
    """SAELens's own runner CLI lists and parses block_diagonal in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-m", "sae_lens.llm_sae_training_runner",
         "--architecture", "block_diagonal", "--help"],
        capture_output=True, text=True, check=True,
    )
    assert re.search(r"\{[^}]*\bblock_diagonal[,}]", result.stdout)  # among the --architecture choices
    assert "--n_heads" in result.stdout
