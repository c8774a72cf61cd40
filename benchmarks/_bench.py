"""What the benchmark scripts share: the device check, the children's environment and
the load average printed beside every figure."""

from __future__ import annotations

import argparse
import os

from sae_lens_attn.commands._values import positive_int


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
    parser.add_argument("--threads", type=positive_int, default=None, help="OMP/MKL threads of every child run")
    parser.add_argument("--huge-pages", action="store_true", help="THP_MEM_ALLOC_ENABLE=1 for every child run")


def child_environment(args: argparse.Namespace) -> dict[str, str]:
    """The one environment every child runs in: threads and huge pages are set before
    torch starts there, identically for both sides of a comparison."""
    env = os.environ.copy()
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    if args.huge_pages:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    return env


def environment_summary(args: argparse.Namespace) -> str:
    """`N threads, THP_MEM_ALLOC_ENABLE=..., load average ...` for a header line."""
    import torch

    threads = args.threads or torch.get_num_threads()
    thp = child_environment(args).get("THP_MEM_ALLOC_ENABLE", "unset")
    return f"torch {torch.__version__}, {threads} threads, THP_MEM_ALLOC_ENABLE={thp}, load average before: {load_average()}"


def load_average() -> str:
    """The 1/5/15-minute load averages, e.g. `1.2 0.9 0.7 (1/5/15 min)`."""
    return " ".join(f"{load:.1f}" for load in os.getloadavg()) + " (1/5/15 min)"
