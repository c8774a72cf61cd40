"""Every script in examples/ runs as written (in its reduced `--quick` mode).

Each runs as `python examples/NAME.py` would, in a fork of one interpreter that has
imported torch and sae_lens once (`tests/_fork_server.py`): a fresh interpreter per script
spent ~15 s of CPU on imports alone. The torchrun example starts its own fresh ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _fork_server import ForkServer  # noqa: E402
from conftest import TORCHRUN  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def forks():
    server = ForkServer({**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"})
    yield server
    server.close()


def run_example(forks: ForkServer, name: str, *args: str, cwd: Path) -> str:
    """Run `examples/<name>` (in a fork, see above) with `cwd`; its stdout."""
    done = forks.run([sys.executable, str(EXAMPLES / name), *args], cwd, timeout=600)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_every_example_is_covered_here():
    covered = {
        "train.py",
        "detect.py",
        "dashboard.py",
        "plugin.py",
        "toy.py",
        "circuit_induction.py",
        "distributed_train.py",
    }
    assert {path.name for path in EXAMPLES.glob("*.py")} == covered


@pytest.fixture(scope="module")
def trained(tmp_path_factory, forks) -> Path:
    """`examples/train.py --quick`, whose SAE the detect/dashboard/plugin examples use."""
    folder = tmp_path_factory.mktemp("examples")
    run_example(forks, "train.py", "--quick", cwd=folder)
    return folder


def test_train_example_saves_an_sae_that_sae_lens_loads(trained):
    from sae_lens import SAE

    sae = SAE.load_from_disk(trained / "example_output" / "sae")
    assert sae.cfg.architecture() == "block_diagonal"
    assert sae.cfg.metadata.hook_name == "blocks.1.attn.hook_z"


def test_detect_dashboard_and_plugin_examples_run_on_the_trained_sae(trained, forks):
    out = run_example(forks, "detect.py", "--quick", cwd=trained)
    assert "rows written to" in out
    detectors = {
        row["detector"]
        for row in json.loads(
            (trained / "example_output" / "families" / "families.json").read_text()
        )["rows"]
    }
    assert detectors >= {"induction", "logit_lens", "enrichment"}

    run_example(forks, "dashboard.py", "--quick", cwd=trained)
    pages = list((trained / "example_output").rglob("*.html"))
    assert any("DFA by source position" in page.read_text() for page in pages)

    out = run_example(forks, "plugin.py", "--quick", cwd=trained)
    assert out.strip()


def test_toy_example_prints_mmcs_for_both_architectures(tmp_path, forks):
    out = run_example(forks, "toy.py", "--quick", cwd=tmp_path)
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for architecture in ("block_diagonal", "standard"):
        assert 0.0 <= float(lines[architecture][1]) <= 1.0


def test_circuit_induction_example_writes_its_report(tmp_path, forks):
    run_example(
        forks, "circuit_induction.py", "--quick", "--out", str(tmp_path / "circuit"), cwd=tmp_path
    )
    report = (tmp_path / "circuit" / "report.md").read_text()
    assert report.startswith("# Circuit of induction features on the embedded model")


def test_distributed_example_trains_one_sae_over_two_ranks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [*TORCHRUN, str(EXAMPLES / "distributed_train.py"), "--quick"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "BlockDiagonalSAE on blocks.1.attn.hook_z" in done.stdout
    assert "trained by 2 ranks (--parallel heads)" in done.stdout
