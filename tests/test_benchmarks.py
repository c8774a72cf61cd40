"""Every benchmark script runs: `python benchmarks/NAME.py --smoke` exits 0 and its last
line is `key=value` pairs with exactly the keys the script declares in `LAST_LINE_KEYS`
(and names in its docstring; `prefix*` stands for one or more keys with that prefix), every
value a finite number (or a name, never nan or inf).

The scripts are found by globbing `benchmarks/*.py` (helpers start with `_`), so a new
script is covered the day it lands, and one without `--smoke` or `LAST_LINE_KEYS` fails
here. One subprocess (`benchmarks/_smoke.py`, with this environment) imports torch and
sae_lens once and runs every selected script in a fork of itself, two at a time: a fresh
interpreter per script would spend seconds of CPU on imports alone, before any work.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted(
    path for path in (ROOT / "benchmarks").glob("*.py") if not path.name.startswith("_")
)
KEY_VALUE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\S+)$")
INITIALISATION = ROOT / "benchmarks" / "initialisation.py"
# the tests that read `smoke_runs`: the first for its `path`, the second for INITIALISATION
SMOKE_RUN_TESTS = (
    "test_the_benchmark_runs_in_smoke_mode",
    "test_the_initialisation_smoke_run_reports_every_dead_share",
)
TIMEOUT_S = 1800  # all smoke runs together; 22 min at a load average of 15-22 on 2 cores


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


@pytest.fixture(scope="module")
def smoke_runs(request: pytest.FixtureRequest) -> dict[str, dict]:
    """`{script name: {"returncode", "stdout", "stderr", "cpu_s"}}` of the scripts this
    session selected, from one `benchmarks/_smoke.py` run."""
    selected = sorted(
        {
            str(item.callspec.params["path"])
            if item.originalname == "test_the_benchmark_runs_in_smoke_mode"
            else str(INITIALISATION)
            for item in request.session.items
            if item.originalname in SMOKE_RUN_TESTS
        }
    )
    if not selected:
        return {}
    runner = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "_smoke.py"), "--jobs", "2", *selected],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=smoke_environment(),
        start_new_session=True,  # its forks are killed with it on a timeout
    )
    try:
        stdout, stderr = runner.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(runner.pid, signal.SIGKILL)
        stdout, stderr = runner.communicate()
        stderr = f"the smoke runs took more than {TIMEOUT_S} s\n{stderr}"
    results = {}
    for line in stdout.splitlines():
        if not line.startswith("{"):
            continue
        result = json.loads(line)
        results[Path(result.pop("script")).name] = result
    print(
        "smoke runs, CPU s:", ", ".join(f"{name} {r['cpu_s']:.1f}" for name, r in results.items())
    )
    missing = {"returncode": None, "stdout": "", "stderr": stderr[-3000:], "cpu_s": 0.0}
    return {Path(path).name: results.get(Path(path).name, missing) for path in selected}


def test_the_benchmarks_are_found():
    names = {path.name for path in BENCHMARKS}
    assert {"block_diagonal.py", "demo.py", "multi_sae.py", "training_throughput.py"} <= names
    assert not any(name.startswith("_") for name in names)


@pytest.mark.parametrize("path", BENCHMARKS, ids=[path.stem for path in BENCHMARKS])
def test_the_benchmark_runs_in_smoke_mode(path: Path, smoke_runs: dict[str, dict]):
    keys, docstring = declared_keys(path)
    assert keys, f"{path.name}: declare LAST_LINE_KEYS = (...), the keys of its last key=value line"
    undocumented = [key for key in keys if key.removesuffix("*") not in docstring]
    assert not undocumented, f"{path.name}: its docstring does not name {undocumented}"

    done = smoke_runs[path.name]
    output = f"{done['stdout'][-3000:]}\n{done['stderr'][-3000:]}"
    assert done["returncode"] == 0, f"{path.name} --smoke exited {done['returncode']}:\n{output}"
    lines = done["stdout"].strip().splitlines()
    assert lines, f"{path.name} --smoke printed nothing:\n{output}"
    pairs = [KEY_VALUE.match(item) for item in lines[-1].split()]
    assert all(pairs), f"{path.name}: the last line is not key=value pairs: {lines[-1]!r}"
    found = {pair.group(1): pair.group(2) for pair in pairs}
    assert keys_pattern(keys).fullmatch(" ".join(found)), (
        f"{path.name}: last-line keys {list(found)}, declared {list(keys)}"
    )
    for key, value in found.items():
        assert is_finite_or_name(value), f"{path.name}: {key}={value} is not a finite number"


def keys_pattern(keys: tuple[str, ...]) -> re.Pattern:
    """The space-joined last-line keys `keys` allows: each key itself, or for `prefix*` one
    or more keys starting with `prefix` (keys that depend on options, e.g. one per SAE)."""
    parts = []
    for key in keys:
        if key.endswith("*"):
            one = re.escape(key[:-1]) + r"\S*"
            parts.append(f"{one}(?: {one})*")
        else:
            parts.append(re.escape(key))
    return re.compile(" ".join(parts))


def is_finite_or_name(value: str) -> bool:
    """A finite number, or a name (e.g. `best_init=zeros:kaiming`); never nan, inf or None."""
    try:
        return math.isfinite(float(value))
    except ValueError:
        return value not in ("None", "")


def test_keys_with_a_star_stand_for_one_or_more_keys():
    pattern = keys_pattern(("dead_share_*", "best"))
    assert pattern.fullmatch("dead_share_topk_a dead_share_relu_b best")
    assert not pattern.fullmatch("best") and not pattern.fullmatch("dead_share_a other best")
    assert keys_pattern(("ratio",)).fullmatch("ratio") and not keys_pattern(("ratio",)).fullmatch(
        "r"
    )
    assert is_finite_or_name("1.5") and is_finite_or_name("zeros:kaiming")
    assert not is_finite_or_name("nan") and not is_finite_or_name("inf")


def test_a_script_without_keys_is_caught(tmp_path: Path):
    script = tmp_path / "bench.py"
    script.write_text('"""Prints ratio=."""\nLAST_LINE_KEYS = ("ratio",)\n')
    assert declared_keys(script) == (("ratio",), "Prints ratio=.")
    script.write_text('"""No keys."""\nprint("ratio=1")\n')
    assert declared_keys(script) == (None, "No keys.")


def test_the_initialisation_smoke_run_reports_every_dead_share(smoke_runs: dict[str, dict]):
    done = smoke_runs[INITIALISATION.name]
    assert done["returncode"] == 0, done["stderr"][-2000:]
    last = dict(pair.split("=") for pair in done["stdout"].strip().splitlines()[-1].split())
    assert set(last) == {
        "dead_share_topk_zeros_kaiming",
        "dead_share_topk_geometric_median_active_subspace",
        "dead_share_relu_zeros_kaiming",
        "dead_share_relu_geometric_median_active_subspace",
        "best_topk_init",
        "best_topk_dead_share",
    }
    assert all(0 <= float(v) <= 1 for k, v in last.items() if k.startswith("dead_share"))
    assert "not seen in 4,096 tokens" in done["stdout"]  # 32 held-out rows: too few to say dead


def test_the_demo_benchmark_starts_a_stage_when_the_bar_first_shows_it(monkeypatch):
    """tqdm writes `\\r<bar>`: a bar's text ends only when the next write starts. A child
    that shows stage "first", works 1 s in silence, then shows "second" must have "first"
    take that second (it used to be counted in the stage before it)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.delenv("SAE_LENS_ATTN_BENCH_FORK", raising=False)
    from demo import run_demo

    script = (
        "import sys, time\n"
        "def bar(text):\n"
        "    sys.stderr.write(text); sys.stderr.flush()\n"
        "bar('\\rdemo: first:   0%|          | 0/2 [00:00<?, ?step/s]')\n"
        "time.sleep(1.0)\n"
        "bar('\\rdemo: second:  50%|#####     | 1/2 [00:01<00:01, 1.00step/s]')\n"
        "time.sleep(0.3)\n"
        "bar('\\n')\n"
    )
    stages, wall, _ = run_demo([sys.executable, "-c", script])
    names = [name for name, _, _ in stages]
    assert names == ["startup", "first", "second (and exit)"]
    seconds = {name: stage_wall for name, stage_wall, _ in stages}
    assert seconds["first"] >= 0.9, stages  # before: about 0.3 s, the sleep went to startup
    assert seconds["startup"] < seconds["first"], stages
    assert 0.25 <= seconds["second (and exit)"] < wall
