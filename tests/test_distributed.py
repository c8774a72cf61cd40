"""Training under torchrun (gloo on CPU, 2 real processes) and exact checkpoints.

References: the same training in one process (`_distributed_worker.train`), and an
uninterrupted run for every resumed one. Each torchrun launch costs ~10-40 s of process
start-up and imports, so the launches are shared by module-scoped fixtures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sae_lens import SAE

sys.path.insert(0, str(Path(__file__).parent))
import _distributed_worker as worker  # noqa: E402
from conftest import TORCHRUN  # noqa: E402

WORKER = str(Path(__file__).parent / "_distributed_worker.py")
ROOT = Path(__file__).parent.parent


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "SAE_LENS_ATTN_DIST_TIMEOUT": "60",
    }


def run_worker(
    out: Path, *args: str, torchrun: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess:
    command = [*(TORCHRUN if torchrun else [sys.executable]), WORKER, str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=timeout)


def checkpoint(out: Path, step: int) -> Path:
    (found,) = (out / "checkpoints").glob(f"*/step_{step}")
    return found


def max_difference(a: SAE, b: SAE) -> float:
    state_b = b.state_dict()
    return max((value - state_b[name]).abs().max().item() for name, value in a.state_dict().items())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> SAE:
    """The reference: the same block-diagonal training in this process."""
    torch.set_num_threads(1)
    sae, _ = worker.train(tmp_path_factory.mktemp("one"), None)
    return sae


def parallel_run(tmp_path_factory, mode: str) -> Path:
    """The output folder of a 2-rank torchrun in `mode`, with checkpoints every 10 steps."""
    out = tmp_path_factory.mktemp(mode)
    result = run_worker(out, "--parallel", mode, "--checkpoint-every", "10")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def data_run(tmp_path_factory) -> Path:
    return parallel_run(tmp_path_factory, "data")


@pytest.fixture(scope="module")
def heads_run(tmp_path_factory) -> Path:
    return parallel_run(tmp_path_factory, "heads")


def test_python_m_sae_lens_attn_runs_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "sae_lens_attn", "train", "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert result.returncode == 0
    assert "--parallel" in result.stdout and "--resume" in result.stdout


def test_data_parallel_matches_one_process_with_the_same_global_batch(data_run, one_process):
    sae = SAE.load_from_disk(data_run / "sae")
    assert max_difference(sae, one_process) < 1e-5
    assert (sae.cfg.metadata.world_size, sae.cfg.metadata.parallel) == (2, "data")
    # sparsity statistics are the global batch's, not rank 0's half
    assert sae.cfg.metadata.l0 == pytest.approx(one_process.cfg.metadata.l0, rel=1e-6)


def test_head_parallel_assembles_one_block_diagonal_sae_equal_to_one_process(
    heads_run, one_process
):
    sae = SAE.load_from_disk(heads_run / "sae")
    assert type(sae).__name__ == "BlockDiagonalSAE"
    assert (sae.cfg.n_heads, sae.cfg.d_sae) == (one_process.cfg.n_heads, one_process.cfg.d_sae)
    assert max_difference(sae, one_process) < 1e-6
    assert (sae.cfg.metadata.world_size, sae.cfg.metadata.parallel) == (2, "heads")
    assert sae.cfg.metadata.head_layout == one_process.cfg.metadata.head_layout
    assert sae.cfg.metadata.l0 == pytest.approx(one_process.cfg.metadata.l0, rel=1e-6)


def test_head_parallel_checkpoint_holds_each_ranks_blocks(heads_run):
    folder = checkpoint(heads_run, 10)
    for rank in (0, 1):
        part = SAE.load_from_disk(folder / f"heads_rank{rank}")
        assert part.cfg.n_heads == 2  # 4 heads over 2 ranks
    assert (folder / "parallel.json").is_file()


@pytest.mark.parametrize("mode", ["data", "heads"])
def test_a_checkpoint_resumes_under_torchrun_to_the_uninterrupted_result(
    mode, data_run, heads_run, tmp_path
):
    uninterrupted = data_run if mode == "data" else heads_run
    result = run_worker(
        tmp_path, "--parallel", mode, "--resume", str(checkpoint(uninterrupted, 10))
    )
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = SAE.load_from_disk(tmp_path / "sae")
    assert max_difference(resumed, SAE.load_from_disk(uninterrupted / "sae")) == 0
    assert resumed.cfg.metadata.l0 == SAE.load_from_disk(uninterrupted / "sae").cfg.metadata.l0


def test_resuming_with_another_world_size_is_refused(data_run, tmp_path):
    result = run_worker(tmp_path, "--resume", str(checkpoint(data_run, 10)), torchrun=False)
    assert result.returncode != 0
    assert (
        "written by 2 rank(s)" in result.stderr and "torchrun --nproc-per-node 2" in result.stderr
    )
    assert not (tmp_path / "sae").exists()


def test_resume_with_default_shuffling_is_bit_exact(tmp_path):
    """SAELens's checkpoint misses the mixing buffer and the shuffling RNG (a resumed run
    differed by ~1e-3); ours saves both."""
    torch.set_num_threads(1)
    whole, _ = worker.train(tmp_path / "whole", None, shuffle=True, checkpoint_every=7)
    resumed, _ = worker.train(
        tmp_path / "resumed", None, shuffle=True, resume_from=checkpoint(tmp_path / "whole", 7)
    )
    assert max_difference(whole, resumed) == 0
    assert resumed.cfg.metadata.l0 == whole.cfg.metadata.l0


def _wait_for(predicate, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out waiting for training to start"
        time.sleep(0.2)


def _rank_pid(parent: int, rank: int) -> int:
    """The pid of torchrun's worker with RANK=rank (read from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(
            next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))
        )
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no worker with RANK={rank} under pid {parent}")


def test_a_killed_rank_ends_the_run_with_an_error_naming_it(tmp_path):
    command = [
        *TORCHRUN,
        WORKER,
        str(tmp_path),
        "--parallel",
        "data",
        "--steps",
        "1000000",
        "--checkpoint-every",
        "20",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    try:
        _wait_for(
            lambda: any((tmp_path / "checkpoints").glob("*/step_20/parallel.json")), process, 240
        )
        os.kill(_rank_pid(process.pid, 1), signal.SIGKILL)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=90)
        elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    assert elapsed < 90
    assert "rank      : 1 (local_rank: 1)" in stderr and "SIGKILL" in stderr
    assert not (tmp_path / "sae").exists()  # no final SAE, complete or not
    assert not list(tmp_path.glob(".sae.*"))


def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path):
    out = tmp_path / "sae_out"
    checkpoints = Path(f"{out}-checkpoints")
    command = [
        sys.executable,
        "-m",
        "sae_lens_attn",
        "train",
        "--layer",
        "1",
        "--training-tokens",
        "16000",
        "--batch-size",
        "64",
        "--context-size",
        "16",
        "--expansion-factor",
        "2",
        "--eval-batches",
        "0",
        "--dead-tokens",
        "0",
        "--checkpoint-every",
        "50",
        "--out",
        str(out),
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    try:
        _wait_for(lambda: any(checkpoints.glob("*/step_50/parallel.json")), process, 240)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr[-3000:]
    assert "resume with: sae-lens-attn train" in stdout
    assert not out.exists()
    folder = max(
        checkpoints.glob("*/step_*"), key=lambda path: int(path.name.removeprefix("step_"))
    )
    assert (folder / "parallel.json").is_file()
    assert str(folder) in stdout
    step = int(folder.name.removeprefix("step_"))
    assert 50 <= step < 250  # interrupted part-way: 16000 tokens / 64 = 250 steps

    resumed = subprocess.run(
        [*command, "--resume", str(folder)], capture_output=True, text=True, env=_env(), timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert SAE.load_from_disk(out).cfg.metadata.parallel == "none"


def test_head_groups_split_a_block_diagonal_state_and_concatenate_back():
    from sae_lens_attn.architectures.block_diagonal import (
        BlockDiagonalTrainingSAE,
        BlockDiagonalTrainingSAEConfig,
    )
    from sae_lens_attn.training.parallel.heads import head_positions, select_heads

    torch.manual_seed(0)
    sae = BlockDiagonalTrainingSAE(
        BlockDiagonalTrainingSAEConfig(d_in=5 * 3, d_sae=5 * 4, n_heads=5)
    )
    state = sae.state_dict()
    groups = head_positions(5, 2)
    assert sorted(sum(groups, [])) == [0, 1, 2, 3, 4] and {len(g) for g in groups} == {2, 3}
    parts = [select_heads(state, 5, group) for group in groups]
    assert parts[0]["W_enc_blocks"].shape == (len(groups[0]), 3, 4)
    assert parts[0]["b_enc"].shape == (len(groups[0]) * 4,)
    assert parts[1]["b_dec"].shape == (len(groups[1]) * 3,)
    for name, value in state.items():
        assert torch.equal(torch.cat([part[name] for part in parts]), value)


def test_data_shards_are_disjoint_and_interleave_back_into_the_stream():
    from datasets import Dataset

    from sae_lens_attn.training.parallel.data import shard_rows

    rows = Dataset.from_dict({"input_ids": [[i] for i in range(10)]})
    shards = [[row["input_ids"][0] for row in shard_rows(rows, rank, 2, 2)] for rank in (0, 1)]
    assert shards == [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7]]
    streamed = shard_rows(rows.to_iterable_dataset(), 1, 2, 2)
    assert [row["input_ids"][0] for row in streamed] == shards[1]
