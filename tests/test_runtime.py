"""The CPU runtime policy: settings resolved from --threads / the environment / the default,
put in place by the CLI before torch is imported."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import warnings

import pytest

from sae_lens_attn.cli import build_parser
from sae_lens_attn.runtime import (
    DEFAULT_MAX_THREADS,
    RuntimeSettings,
    available_cpus,
    default_threads,
    resolve_settings,
)

COMPUTE_COMMANDS = ("circuit", "dashboard", "demo", "detect", "toy", "train")


def test_explicit_threads_win_over_the_environment_which_wins_over_the_default(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert resolve_settings().threads == default_threads() == min(DEFAULT_MAX_THREADS, available_cpus())
    assert resolve_settings().wait_policy == "PASSIVE"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    assert resolve_settings().threads == 3 and resolve_settings().wait_policy == "ACTIVE"
    assert resolve_settings(threads=1).threads == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "zero")  # not a positive integer: the default
    assert resolve_settings().threads == default_threads()


def test_settings_name_every_thread_pool_and_huge_pages_only_when_asked():
    env = RuntimeSettings(threads=2).environment()
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "2"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env.get("THP_MEM_ALLOC_ENABLE") == ("1" if sys.platform.startswith("linux") else None)
    assert "THP_MEM_ALLOC_ENABLE" not in RuntimeSettings(threads=2, huge_pages=False).environment()
    with pytest.raises(ValueError, match="threads must be >= 1"):
        RuntimeSettings(threads=0)


def test_every_compute_command_takes_threads_and_no_huge_pages():
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name in COMPUTE_COMMANDS:
        options = {o for action in commands.choices[name]._actions for o in action.option_strings}
        assert {"--threads", "--no-huge-pages"} <= options, name
    args = parser.parse_args(["train", "--layer", "1", "--threads", "3", "--no-huge-pages"])
    assert args.threads == 3 and args.huge_pages is False


def test_threads_must_be_a_positive_integer(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--threads", "0"])
    assert "expected an integer >= 1" in capsys.readouterr().err


CHILD = """
import json, os, sys
from sae_lens_attn import cli
args = cli.build_parser().parse_args(sys.argv[1:])
before = "torch" in sys.modules
cli.apply_runtime_policy(args)
import torch
print(json.dumps({"torch_before": before, "threads": torch.get_num_threads(),
                  "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                                          "THP_MEM_ALLOC_ENABLE")}}))
"""


def run_child(*argv: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                                             "THP_MEM_ALLOC_ENABLE")}
    result = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_cli_sets_threads_and_openmp_variables_before_torch_starts():
    seen = run_child("demo", "--threads", "1")
    assert seen["torch_before"] is False  # parsing the command line never imports torch
    assert seen["threads"] == 1
    assert seen["env"]["OMP_NUM_THREADS"] == "1" and seen["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    if sys.platform.startswith("linux"):
        assert seen["env"]["THP_MEM_ALLOC_ENABLE"] == "1"
    assert run_child("demo", "--no-huge-pages")["env"]["THP_MEM_ALLOC_ENABLE"] is None
    assert run_child("demo")["threads"] == default_threads()


def test_applied_after_torch_it_sets_threads_and_warns_once_about_the_rest(monkeypatch):
    import torch

    from sae_lens_attn.runtime import apply_runtime_settings

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    threads = torch.get_num_threads()
    try:
        with pytest.warns(UserWarning, match="only apply to new processes"):
            apply_runtime_settings(RuntimeSettings(threads=1))
        assert torch.get_num_threads() == 1 and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing new for torch to miss: no warning
            apply_runtime_settings(RuntimeSettings(threads=1))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator behaviour")
def test_release_freed_memory_gives_glibcs_kept_blocks_back_to_the_os():
    import psutil
    import torch

    from sae_lens_attn.runtime import release_freed_memory

    def rss() -> int:
        return psutil.Process().memory_info().rss

    release_freed_memory()  # what earlier tests left free, so the blocks below need new pages
    start = rss()
    raise_threshold = torch.ones(24 * 2**20 // 4)  # a freed 24 MB block raises glibc's mmap threshold
    del raise_threshold
    blocks = [torch.ones(16 * 2**20 // 4) for _ in range(20)]  # 320 MB, now from glibc's heap
    keep = blocks[-1]  # pins the top of the heap, so free() cannot shrink it
    del blocks
    kept = rss()
    release_freed_memory()
    assert kept - start > 250e6  # freed, yet still held by the process
    assert kept - rss() > 250e6
    del keep


FAULTS_CHILD = """
import resource, sys
from sae_lens_attn.runtime import configure_runtime
configure_runtime(1, huge_pages=sys.argv[1] == "on")
import torch
x = torch.ones(2**20)  # 4 MiB: every x * 2 below is a fresh 4 MiB block
for _ in range(5):
    (x * 2).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    (x * 2).sum()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 100)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator thresholds")
def test_with_huge_pages_fresh_mid_size_tensors_reuse_freed_memory():
    """Huge pages alone made glibc hand every freed 2 MiB-aligned block back, so each fresh
    4 MiB tensor faulted its pages in again: 514 minor faults a tensor measured on the AVX2
    EPYC (a ReLU of it 2.6 ms against 0.14 ms), 20-62 with the thresholds, 31 without huge
    pages. A user's own thresholds are left alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "THP_", "OMP_"))}

    def faults(huge_pages: str, **extra: str) -> float:
        result = subprocess.run([sys.executable, "-c", FAULTS_CHILD, huge_pages], capture_output=True,
                                text=True, env=env | extra, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return float(result.stdout.strip().splitlines()[-1])

    assert faults("on") < 256  # a quarter of the tensor's 1024 pages
    assert faults("off") < 256
    # glibc's own start-up thresholds, kept because the user set one: the blocks go back
    assert faults("on", MALLOC_TRIM_THRESHOLD_="131072", MALLOC_MMAP_THRESHOLD_="131072") > 256


def test_huge_pages_bring_the_allocator_thresholds_for_child_processes():
    env = RuntimeSettings(threads=2).environment()
    if sys.platform.startswith("linux"):
        assert env["MALLOC_MMAP_THRESHOLD_"] == str(32 * 2**20)
        assert env["MALLOC_TRIM_THRESHOLD_"] == str(2**30)
    assert "MALLOC_TRIM_THRESHOLD_" not in RuntimeSettings(threads=2, huge_pages=False).environment()
