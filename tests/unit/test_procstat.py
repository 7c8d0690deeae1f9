"""The bench's context-switch count: every live thread of every process in a tree."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

from bench import procstat


def test_context_switches_count_the_other_threads_of_the_process() -> None:
    gate, done, release = threading.Event(), threading.Event(), threading.Event()

    def wait_often() -> None:
        for _ in range(20):
            gate.wait(0.001)  # each timed-out wait blocks and wakes: a switch
        done.set()
        release.wait(30)  # alive, so /proc still lists it, until the test is done

    thread = threading.Thread(target=wait_often)
    before = procstat.context_switches(os.getpid())
    thread.start()
    try:
        assert done.wait(30)
        assert procstat.context_switches(os.getpid()) - before >= 20
    finally:
        release.set()
        thread.join()


def test_context_switches_take_in_the_processes_under_the_root() -> None:
    # The root blocks once in wait(); its child sleeps 200 times (a switch each), then
    # blocks on input(). Only counting the child makes the root's count reach 200.
    grandchild = "import time\nfor _ in range(200): time.sleep(0.001)\ninput()"
    root = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {grandchild!r}])",
        ],
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while procstat.context_switches(root.pid) < 200:
            assert time.monotonic() < deadline, "the child's switches were not counted"
            time.sleep(0.05)
        assert len(procstat.tree(root.pid)) == 2
    finally:
        root.communicate(b"\n", timeout=30)


def test_a_process_that_is_gone_counts_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert procstat.context_switches(child.pid) == 0
