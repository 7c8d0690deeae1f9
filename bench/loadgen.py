"""Build and drive the native load generator (bench/go/loadgen/main.go).

It builds offline from Debian's golang-go and golang-google-grpc-dev in GOPATH mode.
One run of it is one timed phase: it warms every connection, says "ready", waits for
our signal, runs, and prints one JSON line; we read the server's CPU on either side.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "bench" / "go" / "loadgen"
BUILD = REPO / "var" / "bench"
BINARY = BUILD / "loadgen"


def build() -> Path:
    """The binary, rebuilt when its source is newer (go's cache makes that cheap)."""
    source = SOURCE / "main.go"
    if BINARY.exists() and BINARY.stat().st_mtime >= source.stat().st_mtime:
        return BINARY
    BUILD.mkdir(parents=True, exist_ok=True)
    env = dict(
        os.environ,
        GO111MODULE="off",
        GOPATH="/usr/share/gocode",
        GOCACHE=str(BUILD / "gocache"),
        GOFLAGS="",
    )
    subprocess.run(
        ["go", "build", "-o", str(BINARY), "./bench/go/loadgen"], cwd=REPO, env=env, check=True
    )
    return BINARY


@dataclass(frozen=True)
class Result:
    completed: int
    errors: int
    first_error: str
    seconds: float
    p50_ms: float
    p99_ms: float
    loadgen_cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0


def run_phase(
    args: Sequence[str], on_start: Callable[[], None], on_end: Callable[[], None]
) -> Result:
    """One timed phase; ``on_start``/``on_end`` run right before and after it."""
    with subprocess.Popen(
        [str(BINARY), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        ready = process.stdout.readline().strip()
        if ready != "ready":
            _, err = process.communicate(timeout=30)
            raise RuntimeError(f"load generator did not start: {(ready + err).strip()[-2000:]}")
        on_start()
        process.stdin.write("go\n")
        process.stdin.flush()
        line = process.stdout.readline()
        on_end()
        process.stdin.close()
        err = process.stderr.read() if process.stderr else ""
        if process.wait(timeout=60) != 0 or not line:
            raise RuntimeError(f"load generator failed: {err.strip()[-2000:]}")
    fields = json.loads(line)
    return Result(**fields)
