"""Every benchmark script runs: `python benchmarks/NAME.py --smoke` exits 0 and its last
line is `key=value` pairs with exactly the keys the script declares in `LAST_LINE_KEYS`
(and names in its docstring), every value a finite number.

The scripts are found by globbing `benchmarks/*.py` (helpers start with `_`), so a new
script is covered the day it lands, and one without `--smoke` or `LAST_LINE_KEYS` fails
here. The smoke runs start together in a small pool of subprocesses (each one imports
torch and sae_lens, seconds of CPU before any work) and every test reads its own result.
"""

from __future__ import annotations

import ast
import math
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(
    path for path in (ROOT / "benchmarks").glob("*.py") if not path.name.startswith("_")
)
KEY_VALUE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\S+)$")
TIMEOUT_S = 300  # per script, on a loaded 2-core machine; a smoke run takes seconds of CPU


def declared_keys(path: Path) -> tuple[tuple[str, ...] | None, str]:
    """`(LAST_LINE_KEYS, module docstring)` of a script, read without running it."""
    module = ast.parse(path.read_text())
    for node in module.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "LAST_LINE_KEYS"
            for target in node.targets
        ):
            return tuple(ast.literal_eval(node.value)), ast.get_docstring(module) or ""
    return None, ast.get_docstring(module) or ""


def smoke_environment() -> dict[str, str]:
    """The caller's environment, with this checkout first on PYTHONPATH and one thread per
    process (two smoke runs share the machine)."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_smoke(path: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [sys.executable, str(path), "--smoke"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=smoke_environment(),
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as error:
        return subprocess.CompletedProcess(
            error.cmd,
            -1,
            str(error.stdout or ""),
            f"timed out after {TIMEOUT_S} s\n{error.stderr or ''}",
        )


@pytest.fixture(scope="module")
def smoke_runs(request: pytest.FixtureRequest):
    """`{script name: Future[CompletedProcess]}` of the scripts this session selected, all
    queued at once and run two at a time."""
    selected = [
        item.callspec.params["path"]
        for item in request.session.items
        if item.originalname == "test_the_benchmark_runs_in_smoke_mode"
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {path.name: pool.submit(run_smoke, path) for path in selected}


def test_the_benchmarks_are_found():
    names = {path.name for path in BENCHMARKS}
    assert {"block_diagonal.py", "demo.py", "multi_sae.py", "training_throughput.py"} <= names
    assert not any(name.startswith("_") for name in names)


@pytest.mark.parametrize("path", BENCHMARKS, ids=[path.stem for path in BENCHMARKS])
def test_the_benchmark_runs_in_smoke_mode(path: Path, smoke_runs: dict[str, Future]):
    keys, docstring = declared_keys(path)
    assert keys, f"{path.name}: declare LAST_LINE_KEYS = (...), the keys of its last key=value line"
    undocumented = [key for key in keys if key not in docstring]
    assert not undocumented, f"{path.name}: its docstring does not name {undocumented}"

    done = smoke_runs[path.name].result()
    output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{path.name} --smoke exited {done.returncode}:\n{output}"
    lines = done.stdout.strip().splitlines()
    assert lines, f"{path.name} --smoke printed nothing:\n{output}"
    pairs = [KEY_VALUE.match(item) for item in lines[-1].split()]
    assert all(pairs), f"{path.name}: the last line is not key=value pairs: {lines[-1]!r}"
    found = {pair.group(1): pair.group(2) for pair in pairs}
    assert list(found) == list(keys), (
        f"{path.name}: last-line keys {list(found)}, declared {list(keys)}"
    )
    for key, value in found.items():
        assert math.isfinite(float(value)), f"{path.name}: {key}={value} is not a finite number"


def test_a_script_without_keys_is_caught(tmp_path: Path):
    script = tmp_path / "bench.py"
    script.write_text('"""Prints ratio=."""\nLAST_LINE_KEYS = ("ratio",)\n')
    assert declared_keys(script) == (("ratio",), "Prints ratio=.")
    script.write_text('"""No keys."""\nprint("ratio=1")\n')
    assert declared_keys(script) == (None, "No keys.")
