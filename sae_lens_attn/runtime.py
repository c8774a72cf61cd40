"""CPU runtime policy: torch's thread counts, how idle OpenMP threads wait, and huge pages.

torch reads these once, when it starts (`OMP_NUM_THREADS` sizes its intra-op pool,
`OMP_WAIT_POLICY` tells OpenMP whether idle threads spin or sleep,
`THP_MEM_ALLOC_ENABLE=1` makes its CPU allocator ask Linux for transparent huge pages),
so they must be in the environment before `import torch`. With huge pages, glibc's
allocator is also told to keep freed blocks of up to 32 MiB for reuse
(`keep_freed_blocks_for_reuse`; `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` for
child processes). The CLI starts without torch
and calls `apply_runtime_settings` before any command imports it; importing this module
does not import torch either.

Defaults (measured, see docs/runtime.md): `DEFAULT_MAX_THREADS` intra-op threads at most,
passive OpenMP waiting (idle threads sleep instead of spinning, so a busy neighbour
process does not make every parallel region wait for a descheduled spinner), and one
inter-op thread. A thread variable the user set in the environment wins over the default;
an explicit `--threads` wins over both.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

# Variables that size a thread pool torch or its BLAS may start.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"
HUGE_PAGES_VARIABLE = "THP_MEM_ALLOC_ENABLE"
DEFAULT_MAX_THREADS = 2
DEFAULT_WAIT_POLICY = "PASSIVE"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Intra-op threads when neither `--threads` nor `OMP_NUM_THREADS` says otherwise."""
    return min(DEFAULT_MAX_THREADS, available_cpus())


def huge_pages_supported() -> bool:
    """Transparent huge pages exist on Linux only (PyTorch's allocator reads the variable
    on Linux CPUs; elsewhere it is ignored)."""
    return sys.platform.startswith("linux")


@dataclass(frozen=True)
class RuntimeSettings:
    """How torch runs on the CPU: `threads` intra-op threads (>= 1), OpenMP
    `wait_policy` ("PASSIVE" or "ACTIVE"), and `huge_pages` for the CPU allocator."""

    threads: int
    wait_policy: str = DEFAULT_WAIT_POLICY
    huge_pages: bool = True

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.wait_policy not in ("PASSIVE", "ACTIVE"):
            raise ValueError(f"wait_policy must be 'PASSIVE' or 'ACTIVE', got {self.wait_policy!r}")

    def environment(self) -> dict[str, str]:
        """The variables to set before torch starts."""
        env = dict.fromkeys(THREAD_VARIABLES, str(self.threads))
        env[WAIT_POLICY_VARIABLE] = self.wait_policy
        if self.huge_pages and huge_pages_supported():
            env[HUGE_PAGES_VARIABLE] = "1"
            env.update((name, str(value)) for name, value in MALLOC_VARIABLES.items())
        return env


def resolve_settings(threads: int | None = None, huge_pages: bool = True) -> RuntimeSettings:
    """`threads` if given, else `OMP_NUM_THREADS` from the environment if it is a positive
    integer, else `default_threads()`; the wait policy likewise from `OMP_WAIT_POLICY`."""
    if threads is None:
        from_env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(from_env) if from_env.isdigit() and int(from_env) > 0 else default_threads()
    policy = os.environ.get(WAIT_POLICY_VARIABLE, DEFAULT_WAIT_POLICY).upper()
    if policy not in ("PASSIVE", "ACTIVE"):
        policy = DEFAULT_WAIT_POLICY
    return RuntimeSettings(threads=threads, wait_policy=policy, huge_pages=huge_pages)


def apply_runtime_settings(settings: RuntimeSettings) -> RuntimeSettings:
    """Put `settings` into the environment (for torch and any child process) and, when
    torch is already imported, set its thread counts directly (the wait policy and huge
    pages then only reach child processes: a warning says so)."""
    env = settings.environment()
    startup_only = (WAIT_POLICY_VARIABLE, HUGE_PAGES_VARIABLE)
    before = {name: os.environ.get(name) for name in startup_only}
    if HUGE_PAGES_VARIABLE in env and "torch" not in sys.modules:
        keep_freed_blocks_for_reuse()  # before the variables below: it leaves a user's own alone
    for name, value in MALLOC_VARIABLES.items():
        if os.environ.get(name, str(value)) != str(value):
            env.pop(name, None)  # a user's own threshold stays
        elif name not in env:
            os.environ.pop(name, None)  # ours, with huge pages now off
    if not settings.huge_pages:
        os.environ.pop(HUGE_PAGES_VARIABLE, None)
    os.environ.update(env)
    if "torch" in sys.modules:
        configure_torch(settings)
        if any(os.environ.get(name) != before[name] for name in startup_only):
            warnings.warn(
                "torch was imported before the runtime settings were applied: thread counts "
                "are set, the OpenMP wait policy and huge pages only apply to new processes",
                stacklevel=2,
            )
    return settings


def configure_runtime(threads: int | None = None, huge_pages: bool = True) -> RuntimeSettings:
    """The CLI's policy for a Python program: `resolve_settings` then
    `apply_runtime_settings`. Call it before `import torch` for the full effect."""
    return apply_runtime_settings(resolve_settings(threads, huge_pages))


def configure_torch(settings: RuntimeSettings) -> None:
    """Set torch's intra-op threads to `settings.threads` and its inter-op pool to one
    thread (the library does not use inter-op parallelism). Imports torch."""
    import torch

    torch.set_num_threads(settings.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only possible before the first parallel work; keep what is there
        pass


def release_freed_memory() -> None:
    """Give the memory of freed tensors back to the OS (glibc's `malloc_trim(0)`); a no-op
    where the C library has no `malloc_trim`.

    glibc serves a large allocation with its own mmap, returned to the OS when freed, until
    the first such block is freed: then it raises its mmap threshold (up to 32 MB) and
    serves later blocks of that size from its heap, which keeps them after they are freed.
    A loop that makes and frees large temporaries then grows the process round by round:
    the taxonomy's signature pass on gpt2-small's shape (24576 features, 2 threads) peaked
    at 7.2 GB of RSS without a trim and at 3.2 GB with one after each feature chunk.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def _malloc_trim() -> Callable[[int], int] | None:
    return getattr(_libc(), "malloc_trim", None)


# glibc's `mallopt` parameters (malloc.h): blocks up to 32 MiB (the largest mmap threshold
# glibc sets by itself) come from its heap, which it trims only past 1 GiB free at its top
# (`release_freed_memory` still trims on request). 200 demo training steps took 23.7-27.1 s
# with huge pages alone, 20.6-22.1 s with a 64 MiB trim threshold (glibc's own largest),
# 17.6-18.9 s with 1 GiB and 16.2-20.4 s with 4 GiB.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES = 32 * 2**20, 2**30
MALLOC_VARIABLES = {"MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD_BYTES, "MALLOC_TRIM_THRESHOLD_": TRIM_THRESHOLD_BYTES}


def keep_freed_blocks_for_reuse() -> bool:
    """Set glibc's mmap and trim thresholds to `MMAP_THRESHOLD_BYTES` and
    `TRIM_THRESHOLD_BYTES` in this process (`mallopt`); False where the C library has no
    `mallopt` or a threshold variable in the environment says otherwise.

    With huge pages on, PyTorch asks for every block of 2 MiB or more 2 MiB-aligned and
    `madvise`s it; glibc's start-up thresholds then hand such blocks back to the OS when
    they are freed, and the next one faults in fresh huge pages. Measured on a 2-vCPU AVX2
    EPYC (2 threads): a ReLU of a fresh 4 MiB tensor took 2.0-3.5 ms against 0.13 ms
    without huge pages and 0.14 ms with them and these thresholds; the embedded model's
    forward pass to layer 2 (16 x 128 tokens) 85-105 ms against 48-59 ms. Blocks above
    32 MiB still get their own mmap, where huge pages pay off (a ReLU of a fresh 256 MiB
    tensor: 174 ms without, 39 ms with)."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None or any(name in os.environ for name in MALLOC_VARIABLES):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
