"""Run Python scripts in forks of one interpreter that has imported torch and sae_lens once.

    python tests/_fork_server.py   # reads requests on stdin, one JSON line each

A request `{"command": [sys.executable, script, *args], "cwd": ..., "env": {...}}` runs the
script as `__main__` in a fork (`benchmarks/_bench.py`'s `start_forked`: the same script,
arguments, environment and output as a fresh interpreter, without seconds of CPU importing
torch and sae_lens again) and answers one JSON line `{"returncode", "stdout", "stderr"}`.
Requests run one at a time. `ForkServer` is the client.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


class ForkServer:
    """A running `_fork_server.py` with environment `env`; `run` one script at a time."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def run(self, command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        """`command` (`[sys.executable, script, *args]`) in a fork with `cwd`, like
        `subprocess.run(..., capture_output=True, text=True)`."""
        request = {"command": command, "cwd": str(cwd), "env": self.env}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            self.close()
            raise subprocess.TimeoutExpired(command, timeout)
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server exited with {self.process.wait()}")
        done = json.loads(line)
        return subprocess.CompletedProcess(
            command, done["returncode"], done["stdout"], done["stderr"]
        )

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def serve() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    from _bench import finish_forked, start_forked

    for line in sys.stdin:
        request = json.loads(line)
        os.chdir(request["cwd"])  # the child inherits it
        child = start_forked(request["command"], request["env"])
        _, status = os.waitpid(child[0], 0)
        done = finish_forked(request["command"], status, child)
        answer = {"returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    serve()
