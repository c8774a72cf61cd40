"""Run benchmark scripts in `--smoke` mode for `tests/test_benchmarks.py`.

    python benchmarks/_smoke.py [--jobs 2] benchmarks/NAME.py ...

This interpreter imports torch and sae_lens once; each script then runs as `__main__` with
`--smoke` in a fork of it (`_bench.start_forked`), `--jobs` at a time, with this process's
environment. A smoke run costs its own work and not seconds of imports per script; the
script's own children are forks too (`_bench.run_python`). One JSON line per script, as it
finishes: `{"script", "returncode", "stdout", "stderr", "cpu_s"}` (`cpu_s`: user + system
seconds of the script and the children it waited for).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from _bench import FORK_CHILDREN, finish_forked, start_forked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="scripts running at once")
    parser.add_argument("scripts", nargs="+")
    args = parser.parse_args()
    env = {**os.environ, FORK_CHILDREN: "1"}
    pending, running = list(args.scripts), {}
    while pending or running:
        while pending and len(running) < args.jobs:
            script = pending.pop(0)
            command = [sys.executable, script, "--smoke"]
            child = start_forked(command, env)
            running[child[0]] = (command, child)
        pid, status, usage = os.wait4(-1, 0)
        command, child = running.pop(pid)
        done = finish_forked(command, status, child)
        print(
            json.dumps(
                {
                    "script": command[1],
                    "returncode": done.returncode,
                    "stdout": done.stdout,
                    "stderr": done.stderr,
                    "cpu_s": usage.ru_utime + usage.ru_stime,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
