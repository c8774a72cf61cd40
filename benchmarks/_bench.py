"""What the benchmark scripts share: the device check, the children's environment and how
they start (`run_python`), the `--smoke` option, and the machine (CPU model and flags,
threads, load average) printed beside every figure."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import IO

from sae_lens_attn.commands._values import positive_int
from sae_lens_attn.runtime import MALLOC_VARIABLES

# the CPU flags that move the figures: AVX-512 and AMX matmul kernels, bf16 support
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
# set by --smoke: child runs are forks of the process, which has imported torch and sae_lens
# once, instead of fresh interpreters that import them again (seconds of CPU each)
FORK_CHILDREN = "SAE_LENS_ATTN_BENCH_FORK"
SMOKE_HELP = (
    "tiny shapes, seconds: checks that the script runs end to end; its figures mean nothing"
)


def add_smoke_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)


def parse_with_smoke(
    parser: argparse.ArgumentParser, argv: list[str] | None = None, **tiny: object
) -> argparse.Namespace:
    """Parse `argv`; with `--smoke`, the options in `tiny` default to those tiny values
    (an option given on the command line still wins), children start as forks
    (`run_python`) and torch runs one thread unless told otherwise: no OpenMP thread pool
    exists when a child is forked, and a smoke run stays light on a shared machine."""
    add_smoke_argument(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**tiny)
        args = parser.parse_args(argv)
        os.environ[FORK_CHILDREN] = "1"
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, "1")
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return args


def run_python(
    command: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run `command` (`[sys.executable, script, *args]` or `[sys.executable, "-m", module,
    *args]`) and capture its output as text, like `subprocess.run`. A fresh interpreter,
    except under `--smoke` (`SAE_LENS_ATTN_BENCH_FORK=1` in this process's environment),
    where it runs in a fork of this process: the same script, arguments, environment and
    output, without importing torch and sae_lens again."""
    if os.environ.get(FORK_CHILDREN) != "1":
        return subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    return run_forked(command, os.environ.copy() if env is None else env)


def popen_python(
    command: list[str], env: dict[str, str] | None = None
) -> subprocess.Popen | ForkedChild:
    """Start `command` (as for `run_python`) with its stdout discarded and its stderr a
    binary pipe (`.stderr`), for a caller that follows the child as it runs (`.pid`,
    `.wait()`, `.returncode`). A fresh interpreter, or under `--smoke` a fork of this
    process (`ForkedChild`)."""
    if os.environ.get(FORK_CHILDREN) != "1":
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    return ForkedChild(command, os.environ.copy() if env is None else env)


class ForkedChild:
    """`command` running as `__main__` in a fork of this process, stdout discarded and
    stderr a pipe: the part of `subprocess.Popen` that `popen_python`'s callers use."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        import sae_lens  # noqa: F401  (imported once here, not in every child)

        read, write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child never returns
            os.close(read)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.dup2(write, 2)
            os._exit(_run_as_main(command, env))
        os.close(write)
        self.pid, self.stderr, self.returncode = pid, os.fdopen(read, "rb"), None

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            self.stderr.close()
        return self.returncode


def run_forked(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`command` run as `__main__` in a fork of this process (with `env` as its environment),
    its stdout and stderr captured; see `run_python`."""
    child = start_forked(command, env)
    _, status = os.waitpid(child[0], 0)
    return finish_forked(command, status, child)


def start_forked(command: list[str], env: dict[str, str]) -> tuple[int, IO[bytes], IO[bytes]]:
    """Fork; the child runs `command` as `__main__` and exits. `(pid, stdout file, stderr
    file)` for `finish_forked` once the child is waited for."""
    import sae_lens  # noqa: F401  (imported once here, not in every child)

    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child never returns
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        os._exit(_run_as_main(command, env))
    return pid, out, err


def finish_forked(
    command: list[str], status: int, child: tuple[int, IO[bytes], IO[bytes]]
) -> subprocess.CompletedProcess:
    """The `CompletedProcess` of a child of `start_forked` that exited with wait `status`."""
    texts = []
    for file in child[1:]:
        file.seek(0)
        texts.append(file.read().decode("utf-8", "replace"))
        file.close()
    return subprocess.CompletedProcess(command, os.waitstatus_to_exitcode(status), *texts)


def _run_as_main(command: list[str], env: dict[str, str]) -> int:
    """Run `python ...` `command` in this (forked) process; its exit status."""
    import runpy

    os.environ.clear()
    os.environ.update(env)
    code = 0
    try:
        if command[1] == "-m":
            sys.argv = [command[2], *command[3:]]
            runpy.run_module(command[2], run_name="__main__", alter_sys=True)
        else:
            sys.argv = command[1:]
            sys.path[0] = str(Path(command[1]).resolve().parent)
            runpy.run_path(command[1], run_name="__main__")
    except SystemExit as done:
        if isinstance(done.code, str):
            print(done.code, file=sys.stderr)
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def require_device(parser: argparse.ArgumentParser, device: str) -> None:
    """Exit with one clear `error:` line when the device is malformed or CUDA is missing."""
    import torch

    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        parser.error(f"--device {device!r}: use cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(
            f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
            "torch.cuda.is_available() is False); use --device cpu or a CUDA machine"
        )


def add_environment_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=positive_int, default=None, help="OMP/MKL threads of every child run"
    )
    parser.add_argument(
        "--huge-pages", action="store_true",
        help="THP_MEM_ALLOC_ENABLE=1 and glibc's thresholds (the CLI's policy) for every child run"
    )


def child_environment(args: argparse.Namespace) -> dict[str, str]:
    """The one environment every child runs in: threads and huge pages are set before
    torch starts there, identically for both sides of a comparison."""
    env = os.environ.copy()
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    if args.huge_pages:  # the CLI's huge-page policy: THP and glibc's thresholds (docs/runtime.md)
        env["THP_MEM_ALLOC_ENABLE"] = "1"
        for name, value in MALLOC_VARIABLES.items():
            env.setdefault(name, str(value))
    return env


def environment_summary(args: argparse.Namespace) -> str:
    """`torch ..., N threads, THP_MEM_ALLOC_ENABLE=..., load average ...; CPU ...` for a header line."""
    import torch

    threads = args.threads or torch.get_num_threads()
    thp = child_environment(args).get("THP_MEM_ALLOC_ENABLE", "unset")
    return (
        f"torch {torch.__version__}, {threads} threads, THP_MEM_ALLOC_ENABLE={thp}, "
        f"load average before: {load_average()}; {machine_summary()}"
    )


def machine_summary() -> str:
    """The CPU a figure came from: `CPU AMD EPYC, 2 CPUs, avx2 avx512f avx512_bf16, no
    amx_tile amx_bf16, torch kernels AVX512` (model and the flags that matter)."""
    model, flags = _cpu_model_and_flags()
    present = [flag for flag in CPU_FLAGS if flag in flags]
    absent = [flag for flag in CPU_FLAGS if flag not in flags]
    parts = [
        f"CPU {model}",
        f"{os.cpu_count()} CPUs",
        " ".join(present) or "none of " + " ".join(CPU_FLAGS),
    ]
    if present and absent:
        parts.append("no " + " ".join(absent))
    try:
        import torch

        parts.append(f"torch kernels {torch.backends.cpu.get_cpu_capability()}")
    except (ImportError, AttributeError):
        pass
    return ", ".join(parts)


def _cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU model name and its flags, from /proc/cpuinfo (Linux; elsewhere the platform's
    processor name and no flags)."""
    model, flags = "", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    model = model or platform.processor() or platform.machine() or "unknown"
    return model, flags


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. `1.2 0.9 0.7 (1/5/15 min)`."""
    return " ".join(f"{load:.1f}" for load in os.getloadavg()) + " (1/5/15 min)"


def build_model(name: str):
    """`embedded` (the shipped model) or `random-gelu-2l` (gelu-2l's shapes, random weights)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    if name == "embedded":
        from sae_lens_attn.models import load_embedded_model

        return load_embedded_model()
    if name == "random-gelu-2l":
        cfg = HookedTransformerConfig(
            n_layers=2,
            d_model=512,
            n_heads=8,
            d_head=64,
            d_mlp=2048,
            d_vocab=48262,
            n_ctx=1024,
            act_fn="gelu",
            normalization_type="LN",
            seed=0,
            device="cpu",
        )
        return HookedTransformer(cfg).eval()
    raise SystemExit(f"unknown --model {name!r}; use embedded or random-gelu-2l")
