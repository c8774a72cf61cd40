"""The README stays a short entry point, and the docs site builds without a warning."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _setup_commands() -> list[str]:
    section = README.split("## Set up", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_is_short_and_links_docs_that_exist():
    assert len(README.splitlines()) <= 300
    links = re.findall(r"\]\((docs/[^)#]+)", README)
    assert len(links) >= 8, "the README should point into the docs"
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, f"README links to missing pages: {missing}"


def test_readme_setup_is_install_and_demo_then_the_ci_test_command():
    install, tests = _setup_commands()
    assert install == 'pip install -e ".[dev]" && sae-lens-attn demo'
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in ci
    assert tests in [line.strip() for line in ci.splitlines()], f"{tests!r} is not what .ci/run runs"


def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    site = tmp_path / "site"
    # the API reference comes from docstrings, the CLI page from the parser, the quick
    # start from the README
    api = (site / "api" / "architectures" / "index.html").read_text()
    assert "BlockDiagonalTrainingSAEConfig" in api and "fold_input_scaling" in api
    cli = (site / "cli" / "index.html").read_text()
    assert "usage: sae-lens-attn detect" in cli and "(default: detect_out)" in cli
    quickstart = (site / "quickstart" / "index.html").read_text()
    assert "Pick a feature in the dropdown" in quickstart
    assert "Unreleased" in (site / "changelog" / "index.html").read_text()
