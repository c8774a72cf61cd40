"""Hostile third-party plugins, installed for real (pip, dist-info entry points): one that
hijacks built-in names, one that returns garbage, two that call sys.exit at import."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HIJACK = '''
from sae_lens_attn.plugins import ArchitectureClasses, PluginEntry, hookimpl


def _standard():
    from sae_lens.saes.standard_sae import (
        StandardSAE, StandardSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig)
    return ArchitectureClasses(StandardSAE, StandardSAEConfig, StandardTrainingSAE,
                               StandardTrainingSAEConfig)


@hookimpl(tryfirst=True)
def sae_lens_attn_architectures():
    return [PluginEntry("block_diagonal", "a StandardSAE in disguise", load=_standard)]


@hookimpl(tryfirst=True)
def sae_lens_attn_detectors():
    return [PluginEntry("induction", "not the real one", load=lambda: None)]
'''

GARBAGE = '''
from sae_lens_attn.plugins import PluginEntry, hookimpl


def _fails():
    raise RuntimeError("cannot load")


@hookimpl
def sae_lens_attn_activation_sources():
    return 42


@hookimpl
def sae_lens_attn_detectors():
    return [7, object(), PluginEntry(5, "numeric name", load=lambda: 1),
            PluginEntry("fine_detector", "the one good entry\x1b[2J", load=lambda: "fine"),
            PluginEntry("loads_badly", "load raises", load=_fails)]


@hookimpl
def sae_lens_attn_dashboard_panels():
    return [PluginEntry("broken_panel", "load raises", load=_fails)]


@hookimpl
def sae_lens_attn_architectures():
    return [PluginEntry("broken_arch", "load raises", load=_fails),
            PluginEntry("int_arch", "load returns an int", load=lambda: 3)]
'''

EXITS_AT_IMPORT = '''
import sys
sys.stderr.write("{marker} imported\\n")
sys.exit({code})
'''

ENTRY_POINTS = '''
[project.entry-points.sae_lens_attn]
aaa_hijack = "aaa_hijack"
garbage_plugin = "garbage_plugin"
exit_plugin = "exit_plugin"

[project.entry-points."sae_lens_attn.architectures"]
block_diagonal = "aaa_hijack"
garbage_plugin = "garbage_plugin"
exit_arch_plugin = "exit_arch_plugin"
'''


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory) -> Path:
    """One distribution `hostile-plugins` with the four modules, installed by pip."""
    root = tmp_path_factory.mktemp("hostile")
    package = root / "package"
    package.mkdir()
    modules = {
        "aaa_hijack": HIJACK,
        "garbage_plugin": GARBAGE,
        "exit_plugin": EXITS_AT_IMPORT.format(marker="EXIT_PLUGIN", code=3),
        "exit_arch_plugin": EXITS_AT_IMPORT.format(marker="EXIT_ARCH_PLUGIN", code="'bye'"),
    }
    for module, source in modules.items():
        (package / f"{module}.py").write_text(source)
    (package / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "hostile-plugins"
        version = "0.0.1"

        [tool.setuptools]
        py-modules = {modules}
    ''').format(modules=list(modules)).replace("'", '"') + ENTRY_POINTS)
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(package)],
        check=True, capture_output=True,
    )
    return site


def run_python(site: Path, *args: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": path}, timeout=300)


def test_import_sae_lens_survives_and_keeps_the_builtin_architecture(hostile_site):
    code = ("import sae_lens; from sae_lens.registry import SAE_CLASS_REGISTRY as R, "
            "SAE_TRAINING_CLASS_REGISTRY as T; "
            "print(R['block_diagonal'][0].__name__, T['block_diagonal'][0].__name__, "
            "'int_arch' in R, 'broken_arch' in R)")
    result = run_python(hostile_site, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["BlockDiagonalSAE", "BlockDiagonalTrainingSAE", "False", "False"]
    # only architecture plugins are imported at `import sae_lens`: the general-group plugin
    # that exits is never imported; the architecture-group one is, and is contained
    assert "EXIT_PLUGIN imported" not in result.stderr
    assert "EXIT_ARCH_PLUGIN imported" in result.stderr
    assert "'exit_arch_plugin (hostile-plugins)' failed to load (exit_arch_plugin): SystemExit('bye')" in result.stderr
    assert "Traceback" not in result.stderr


def test_plugins_command_lists_the_good_and_reports_each_bad_entry(hostile_site):
    result = run_python(hostile_site, "-m", "sae_lens_attn.cli", "plugins")
    assert result.returncode == 1
    rows = {tuple(line.split(None, 3)[:3]) for line in result.stdout.splitlines()}
    assert ("architecture", "block_diagonal", "block_diagonal") in rows
    assert ("detector", "induction", "detectors") in rows
    assert ("detector", "fine_detector", "garbage_plugin") in rows
    assert "\x1b" not in result.stdout and "the one good entry?[2J" in result.stdout
    assert ("activation_source", "hook_z", "hook_z") in rows
    errors = [line for line in result.stderr.splitlines() if not line.endswith("PLUGIN imported")]
    assert all(line.startswith("error: plugin ") for line in errors), result.stderr
    expected = [
        "'aaa_hijack': architecture 'block_diagonal' clashes with architecture "
        "'block_diagonal' of built-in plugin 'block_diagonal': kept the one of 'block_diagonal'",
        "'aaa_hijack': detector 'induction' clashes with detector 'induction' of built-in "
        "plugin 'detectors': kept the one of 'detectors'",
        "'exit_plugin (hostile-plugins)': failed to load (exit_plugin): SystemExit(3)",
        "'exit_arch_plugin (hostile-plugins)': failed to load (exit_arch_plugin): SystemExit('bye')",
        "'garbage_plugin': hook sae_lens_attn_activation_sources returned int 42",
        "'garbage_plugin': hook sae_lens_attn_detectors entry 0 skipped: int 7 is not a PluginEntry",
        "'garbage_plugin': hook sae_lens_attn_detectors entry 1 skipped: object <object",
        "'garbage_plugin': hook sae_lens_attn_detectors entry 2 skipped: name 5 is not",
    ]
    for text in expected:
        assert sum(text in line for line in errors) == 1, (text, result.stderr)
    assert "Traceback" not in result.stderr


def test_bad_architecture_entries_are_skipped_by_name(hostile_site):
    code = textwrap.dedent("""
        import warnings
        warnings.simplefilter("ignore")
        from sae_lens_attn.plugins import PluginError, get_plugin_manager, register_architectures_with_sae_lens
        manager = get_plugin_manager()
        print(register_architectures_with_sae_lens(manager))
        for error in manager.load_errors:
            if "_arch" in error.error:
                print(error.plugin, error.error)
        print(manager.get("detector", "fine_detector"))
        try:
            manager.get("detector", "loads_badly")
        except PluginError as err:
            print("PluginError", err)
        from sae_lens_attn.dashboard.render import load_panels
        print("panels", len(load_panels()), "broken_panel" in [p.name for p in load_panels()])
    """)
    result = run_python(hostile_site, "-c", code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "['block_diagonal', 'block_diagonal_jumprelu', 'block_diagonal_batchtopk']"
    assert ("garbage_plugin architecture 'broken_arch' failed to load: RuntimeError('cannot load')"
            in lines)
    assert ("garbage_plugin architecture 'int_arch' skipped: load() returned int 3, expected an "
            "ArchitectureClasses" in lines)
    assert "fine" in lines
    assert ("PluginError detector 'loads_badly' of plugin 'garbage_plugin' failed to load: "
            "RuntimeError('cannot load')" in lines)
    assert lines[-1].startswith("panels ") and lines[-1].endswith(" False") and lines[-1] != "panels 0 False"


@pytest.mark.parametrize(
    "value, disabled",
    [("", False), ("0", False), ("false", False), ("No", False), (" off ", False),
     ("1", True), ("true", True), ("yes", True), ("anything", True)],
)
def test_no_autoload_switch_parses_like_a_flag(value, disabled):
    from sae_lens_attn._autoload import autoload_disabled

    assert autoload_disabled({"SAE_LENS_ATTN_NO_AUTOLOAD": value}) is disabled
    assert autoload_disabled({}) is False


def test_the_pth_line_honours_the_switch(tmp_path):
    """The repository's .pth line, processed by `site` as at interpreter start."""
    pth = Path(__file__).parents[1] / "sae_lens_attn" / "_autoload.pth"
    (tmp_path / "sae_lens_attn.pth").write_text(pth.read_text())
    code = (f"import site, sys; site.addsitedir({str(tmp_path)!r}); "
            "print(any(type(f).__name__ == 'SAELensImportWatcher' for f in sys.meta_path))")
    for value, expected in [("0", "True"), ("false", "True"), ("1", "False")]:
        env = {**os.environ, "SAE_LENS_ATTN_NO_AUTOLOAD": value}
        result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True,
                                text=True, env=env, check=True)
        assert result.stdout.strip() == expected, (value, result.stderr)


def test_isolated_mode_still_runs_the_autoload():
    """`python -I` skips PYTHON* variables and the user site, not site-packages' .pth."""
    code = "import sys; print(any(type(f).__name__ == 'SAELensImportWatcher' for f in sys.meta_path))"
    result = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "True"


def test_import_sae_lens_imports_only_architecture_plugins():
    from importlib.metadata import entry_points

    from sae_lens_attn.plugins import ARCHITECTURE_ENTRY_POINT_GROUP, is_builtin

    if not any(is_builtin(ep) for ep in entry_points(group=ARCHITECTURE_ENTRY_POINT_GROUP)):
        pytest.skip("installed metadata predates the sae_lens_attn.architectures group: reinstall")
    code = ("import sys, sae_lens; print(sorted(m for m in sys.modules "
            "if m.startswith('sae_lens_attn.') and m.endswith('.plugin')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "['sae_lens_attn.architectures.plugin']"
