"""What the bench reads from /proc: CPU and memory of a server's process tree.

CPU per request is the sum of utime+stime (fields 14 and 15 of /proc/PID/stat) over the
server's processes before and after a timed phase, divided by the requests served: it
does not depend on what the load generator costs, so it compares two servers fairly.
"""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces; the fields after it start past the last ")".
    return text.rpartition(")")[2].split()


def tree(root: int) -> list[int]:
    """``root`` and every process under it."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    found = [root]
    for pid in found:
        found.extend(child for child, parent in parents.items() if parent == pid)
    return found


def cpu_seconds(root: int) -> dict[int, float]:
    """User+system CPU so far of ``root`` and each process under it, by pid."""
    seconds: dict[int, float] = {}
    for pid in tree(root):
        fields = _stat(pid)
        if fields is not None:
            # utime, stime: fields 14 and 15 of /proc/PID/stat (1-based), 11 and 12 here.
            seconds[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds


def spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the tree spent in between (a process that appeared counts from zero)."""
    return sum(used - before.get(pid, 0.0) for pid, used in after.items())


def _machine() -> list[int]:
    """The first eight fields of /proc/stat's "cpu" line: user .. steal, in ticks."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot."""
    fields = _machine()
    idle, iowait = fields[3], fields[4]
    return (sum(fields) - idle - iowait) / CLOCK_TICKS


def machine_idle_seconds() -> float:
    """CPU seconds all cores spent idle (or waiting on I/O) since boot: a server that
    leaves cores idle under load is waiting on something other than the CPU."""
    fields = _machine()
    return (fields[3] + fields[4]) / CLOCK_TICKS


def context_switches(root: int) -> int:
    """Context switches so far, voluntary and not, of every live thread of ``root`` and
    each process under it (/proc/PID/task/TID/status; a thread that has exited is no
    longer listed, so this suits servers whose threads live as long as they do)."""
    total = 0
    for pid in tree(root):
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                status = (task / "status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def peak_rss_mb(root: int) -> dict[int, float]:
    """Each process's peak resident memory (VmHWM) in MB, by pid."""
    peaks: dict[int, float] = {}
    for pid in tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks[pid] = int(line.split()[1]) / 1024
    return peaks


def is_worker(pid: int, root: int, workers: int) -> bool:
    """A process that serves: the server itself, or with several workers one of its
    spawns (not the supervisor, nor multiprocessing's resource tracker)."""
    if workers == 1:
        return pid == root
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"spawn_main" in cmdline
