"""Issuance throughput next to the HSM's raw signing rate, for each CA key algorithm.

    .venv/bin/python bench/issuance.py        (what `make bench` runs)

For ECDSA-P256 and RSA-2048 CA keys, each on a fresh SoftHSM token: the token's raw
signing rate with the project's own PKCS#11 backend (one process, one thread, no
server running), then certificates/second and latency through the gRPC service at
1 and 16 concurrent clients (threads, one Client each), and at 16 clients against two
worker processes. Every certificate costs the CA exactly one HSM signature, so the
raw rate is the ceiling the service can approach but not pass (per worker process).

gRPC lets every channel in a process with the same target and options share one TCP
connection, and SO_REUSEPORT hands a connection to one worker for its whole life: 16
plain Clients in one process therefore load a single worker. Real callers (kubeadm,
kubelets) are separate processes with their own connections, so the threads here use
their own connections too; one extra row keeps the shared connection to show the effect.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# Run as a script, Python puts bench/ on sys.path, not the repo root that holds tests/.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, padding  # noqa: E402
from kubeca_client.client import Client  # noqa: E402
from kubeca_client.errors import KubecaError  # noqa: E402
from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key  # noqa: E402
from kubeca_server.keys.backend import CAPrivateKey  # noqa: E402

from tests.support import (  # noqa: E402
    SOFTHSM_MODULE,
    RunningServer,
    Token,
    make_token,
    run_server_cli,
    write_server_config,
)

CA_ALGORITHMS = (KeyAlgorithm.ECDSA_P256, KeyAlgorithm.RSA_2048)
# The "admin" profile takes no parameters and is signed by this CA.
PROFILE = "admin"
CA_KEY_LABEL = "kubeca/kubernetes-ca"
MAX_REQUESTS = 1000
MAX_PHASE_SECONDS = 8.0
RAW_SIGN_SECONDS = 2.0
# Roughly the size of a leaf certificate's TBS, the data the CA really signs.
RAW_PAYLOAD_BYTES = 600
CLIENT_TIMEOUT_SECONDS = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Phase:
    workers: int
    clients: int
    # False: plain Clients, which gRPC puts on one shared connection (see the docstring).
    own_connections: bool = True


PHASES = (Phase(1, 1), Phase(1, 16), Phase(2, 16), Phase(2, 16, own_connections=False))


# --- the HSM's raw rate (runs in a spawned process) -------------------------------


def _signer(key: CAPrivateKey) -> Callable[[bytes], bytes]:
    """The same signature call cryptography's CertificateBuilder makes for this key."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return lambda data: key.sign(data, ec.ECDSA(hashes.SHA256()))
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def _check_signature(key: CAPrivateKey, data: bytes, signature: bytes) -> None:
    """A rate is meaningless if the signatures are not real: verify one in software."""
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    else:
        public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())


def raw_sign_rate(conf: str, token_label: str, pin: str, seconds: float) -> float:
    """Signatures/second with the CA key, one thread, through Pkcs11Backend.

    Meant for a fresh process: the module reads SOFTHSM2_CONF when it loads, and
    python-pkcs11 loads it once per process, so each token needs its own process.
    """
    os.environ["SOFTHSM2_CONF"] = conf
    # Imported here so the parent process never loads the PKCS#11 module at all.
    from kubeca_server.keys.pkcs11_backend import Pkcs11Backend

    backend = Pkcs11Backend(SOFTHSM_MODULE, token_label, pin)
    try:
        key = backend.find_key(CA_KEY_LABEL)
        if key is None:
            raise RuntimeError(f"token {token_label!r} has no key {CA_KEY_LABEL!r}")
        sign = _signer(key)
        payload = os.urandom(RAW_PAYLOAD_BYTES)
        # Untimed: the first signature also looks up and caches the private-key handle.
        _check_signature(key, payload, sign(payload))
        count = 0
        start = now = time.perf_counter()
        while now - start < seconds:
            sign(payload)
            count += 1
            now = time.perf_counter()
        return count / (now - start)
    finally:
        backend.close()


def measure_raw_rate(token: Token) -> float:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        future = pool.submit(
            raw_sign_rate, str(token.conf), token.label, token.pin, RAW_SIGN_SECONDS
        )
        return future.result()


# --- CPU accounting ---------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces; fields after it start past the last ")".
    return text.rpartition(")")[2].split()


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _proc_stat(int(entry.name))) is not None:
            parents[int(entry.name)] = int(fields[1])
    found = [root]
    for pid in found:
        found.extend(child for child, parent in parents.items() if parent == pid)
    return found


def server_cpu_seconds(server: RunningServer) -> dict[int, float]:
    """User+system CPU so far of the server and each process under it, by pid."""
    if server.process is None:
        return {}
    seconds: dict[int, float] = {}
    for pid in _descendants(server.process.pid):
        fields = _proc_stat(pid)
        if fields is not None:
            # utime and stime: fields 14 and 15 of /proc/PID/stat, 1-based.
            seconds[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return seconds


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (steal counts: it was not ours)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields) - idle - iowait) / CLOCK_TICKS


def is_worker(server: RunningServer, pid: int) -> bool:
    """The process that serves: the server itself, or with --workers N one of its N spawns."""
    if server.workers == 1 or server.process is None:
        return server.process is not None and pid == server.process.pid
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> dict[int, float]:
    """CPU seconds each server process spent in between (a restarted worker from zero)."""
    return {pid: used - before.get(pid, 0.0) for pid, used in after.items()}


# --- the end-to-end load ------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    completed: int
    errors: list[str]
    seconds: float
    latencies_ms: list[float]
    # CPU seconds of all server processes, and of each worker, busiest first.
    server_cpu: float
    worker_cpu: list[float]
    bench_cpu: float
    # Every process on the machine, ours included: the rest is load we did not make.
    machine_cpu: float


class WorkQueue:
    """Hands out pre-made CSRs until they run out or the phase's time is up."""

    def __init__(self, csrs: Sequence[bytes], max_seconds: float) -> None:
        self._csrs = csrs
        self._max_seconds = max_seconds
        self._next = 0
        self._deadline = float("inf")
        self._lock = threading.Lock()

    def start(self) -> None:
        self._deadline = time.perf_counter() + self._max_seconds

    def take(self) -> bytes | None:
        with self._lock:
            if self._next >= len(self._csrs) or time.perf_counter() >= self._deadline:
                return None
            self._next += 1
            return self._csrs[self._next - 1]


@dataclass
class ClientResult:
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _drive(client: Client, work: WorkQueue, barrier: threading.Barrier, out: ClientResult) -> None:
    barrier.wait()
    while (csr := work.take()) is not None:
        began = time.perf_counter()
        try:
            # force_new: the CSRs repeat across phases, and the ledger would otherwise
            # answer repeats from the inventory without signing anything.
            client.issue_certificate(PROFILE, csr, force_new=True)
        except KubecaError as exc:
            out.errors.append(f"{type(exc).__name__}: {exc.message}")
            continue
        out.latencies_ms.append((time.perf_counter() - began) * 1000)


# Clients in one process share one connection unless told otherwise, and SO_REUSEPORT
# balances connections, not requests: a shared connection would load one worker only.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


@contextmanager
def connected_clients(
    server: RunningServer, count: int, own_connections: bool, warmup_csr: bytes
) -> Iterator[list[Client]]:
    options = OWN_CONNECTION if own_connections else ()
    clients = [server.client(CLIENT_TIMEOUT_SECONDS, options) for _ in range(count)]
    try:
        # Untimed: connects each channel and warms each worker's one-off lint setup.
        for client in clients:
            client.issue_certificate(PROFILE, warmup_csr, force_new=True)
        yield clients
    finally:
        for client in clients:
            client.close()


def run_load(server: RunningServer, phase: Phase, csrs: Sequence[bytes]) -> Load:
    work = WorkQueue(csrs[1:], MAX_PHASE_SECONDS)
    results = [ClientResult() for _ in range(phase.clients)]
    marks: dict[str, float] = {}
    server_before: dict[int, float] = {}

    def at_start() -> None:
        # The slow /proc scan first, so the clock starts after it.
        server_before.update(server_cpu_seconds(server))
        marks.update(
            wall=time.perf_counter(), cpu=time.process_time(), machine=machine_busy_seconds()
        )
        work.start()

    barrier = threading.Barrier(phase.clients, action=at_start)
    connecting = connected_clients(server, phase.clients, phase.own_connections, csrs[0])
    with connecting as connected:
        threads = [
            threading.Thread(target=_drive, args=(client, work, barrier, result))
            for client, result in zip(connected, results, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - marks["wall"]
        bench_cpu = time.process_time() - marks["cpu"]
        machine_cpu = machine_busy_seconds() - marks["machine"]
        server_cpu = cpu_spent(server_before, server_cpu_seconds(server))
    workers = [cpu for pid, cpu in server_cpu.items() if is_worker(server, pid)]
    latencies = sorted(ms for r in results for ms in r.latencies_ms)
    return Load(
        completed=len(latencies),
        errors=[e for r in results for e in r.errors],
        seconds=seconds,
        latencies_ms=latencies,
        server_cpu=sum(server_cpu.values()),
        worker_cpu=sorted(workers, reverse=True),
        bench_cpu=bench_cpu,
        machine_cpu=machine_cpu,
    )


# --- one CA algorithm end to end ------------------------------------------------------


@dataclass(frozen=True)
class Row:
    algorithm: KeyAlgorithm
    phase: Phase
    load: Load
    raw_rate: float

    @property
    def rate(self) -> float:
        return self.load.completed / self.load.seconds if self.load.seconds else 0.0

    def percentile_ms(self, fraction: float) -> float:
        """Nearest-rank percentile; NaN when nothing completed."""
        values = self.load.latencies_ms
        if not values:
            return float("nan")
        return values[max(1, math.ceil(len(values) * fraction)) - 1]

    @property
    def server_ms_per_cert(self) -> float:
        return 1000 * self.load.server_cpu / self.load.completed if self.load.completed else 0.0

    @property
    def worker_cores(self) -> list[float]:
        """Cores used by each worker, busiest first."""
        return [cpu / self.load.seconds for cpu in self.load.worker_cpu]

    @property
    def bench_cores(self) -> float:
        return self.load.bench_cpu / self.load.seconds

    @property
    def other_cores(self) -> float:
        """Cores busy with processes that are neither the server nor this benchmark."""
        ours = self.load.server_cpu + self.load.bench_cpu
        return max(0.0, self.load.machine_cpu - ours) / self.load.seconds


def make_csrs(count: int) -> list[bytes]:
    # Distinct keys, like real callers; made before any timing starts.
    return [build_csr(generate_private_key(KeyAlgorithm.ECDSA_P256)) for _ in range(count)]


def benchmark_algorithm(algorithm: KeyAlgorithm, csrs: Sequence[bytes]) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="kubeca-bench-") as scratch:
        base = Path(scratch)
        token = make_token(base / "token", label=f"bench-{algorithm.value.lower()}")
        config = write_server_config(base / "server", token, key_algorithm=algorithm.value)
        run_server_cli(config, token, "init")
        # Before any server starts: the raw rate must not compete with it for cores.
        raw = measure_raw_rate(token)
        rows: list[Row] = []
        for phase in PHASES:
            rows.append(Row(algorithm, phase, run_phase(config, token, phase, csrs), raw))
            print(f"  {algorithm.value}: {_describe(phase)} done", flush=True)
        return rows


def run_phase(config: Path, token: Token, phase: Phase, csrs: Sequence[bytes]) -> Load:
    server = RunningServer(config, token, workers=phase.workers)
    try:
        server.start()
        return run_load(server, phase, csrs)
    finally:
        server.stop()


def _describe(phase: Phase) -> str:
    connections = "own connections" if phase.own_connections else "one shared connection"
    return f"{phase.workers} worker(s), {phase.clients} client(s), {connections}"


# --- report ---------------------------------------------------------------------------------

HEADER = (
    "CA key",
    "workers",
    "clients",
    "conns",
    "certs",
    "errors",
    "certs/s",
    "p50 ms",
    "p99 ms",
    "srv CPU ms/cert",
    "worker cores",
    "bench cores",
    "other cores",
    "HSM raw signs/s (limit)",
    "% of limit",
)


def _cells(row: Row) -> tuple[str, ...]:
    return (
        row.algorithm.value,
        str(row.phase.workers),
        str(row.phase.clients),
        str(row.phase.clients if row.phase.own_connections else 1),
        str(row.load.completed),
        str(len(row.load.errors)),
        f"{row.rate:.1f}",
        f"{row.percentile_ms(0.50):.1f}",
        f"{row.percentile_ms(0.99):.1f}",
        f"{row.server_ms_per_cert:.1f}",
        "/".join(f"{cores:.2f}" for cores in row.worker_cores),
        f"{row.bench_cores:.2f}",
        f"{row.other_cores:.2f}",
        f"{row.raw_rate:.0f}",
        f"{100 * row.rate / row.raw_rate:.1f}%",
    )


def table(rows: Sequence[Row]) -> str:
    lines = [HEADER, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    text = [" | ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    text.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(text)


def bound_note(rows: Sequence[Row]) -> str:
    """What limits the best row, judged only from what this run measured."""
    best = max(rows, key=lambda r: r.rate)
    share = 100 * best.rate / best.raw_rate
    if share >= 80:
        return f"{best.algorithm.value}: the token: {best.rate:.0f} certs/s is {share:.0f}% of it."
    cores = os.cpu_count() or 1
    server = best.load.server_cpu / best.load.seconds
    busy = best.load.machine_cpu / best.load.seconds
    if busy >= 0.8 * cores:
        limit = (
            f"the {cores} cores are {100 * busy / cores:.0f}% busy (server {server:.2f}, load "
            f"generator {best.bench_cores:.2f}, other processes {best.other_cores:.2f})"
        )
    else:
        limit = f"the busiest worker uses {max(best.worker_cores, default=0.0):.2f} of a core"
    return (
        f"{best.algorithm.value}: CPU, not the HSM ({best.rate:.0f} certs/s is {share:.0f}% of "
        f"the token's rate): {limit}, and the server spends {best.server_ms_per_cert:.1f} ms CPU "
        f"per certificate, of which the HSM signature is {1000 / best.raw_rate:.2f} ms."
    )


def shared_connection_note(rows: Sequence[Row]) -> str | None:
    """Say so when one shared connection left all workers but one idle."""
    idle = [
        r
        for r in rows
        if not r.phase.own_connections
        and r.phase.workers > 1
        and min(r.worker_cores, default=0.0) < 0.1
    ]
    if not idle:
        return None
    cores = ", ".join("/".join(f"{c:.2f}" for c in r.worker_cores) for r in idle)
    return (
        f"one shared connection: worker cores {cores}: every request went to one worker "
        "(SO_REUSEPORT balances connections, not requests)."
    )


def other_load_note(rows: Sequence[Row]) -> str | None:
    """Name the rows during which something else on the machine took CPU."""
    disturbed = [r for r in rows if r.other_cores >= 0.25]
    if not disturbed:
        return None
    which = "; ".join(
        f"{r.algorithm.value}, {_describe(r.phase)} ({r.other_cores:.2f} cores)" for r in disturbed
    )
    return (
        f"other processes took CPU during {which}: those rows understate what this "
        "machine does when otherwise idle."
    )


def main() -> int:
    cores = os.cpu_count()
    print(f"kubeca issuance benchmark: profile {PROFILE!r}, ECDSA-P256 leaf CSRs, {cores} cores")
    print(
        f"each phase: {MAX_REQUESTS} requests or {MAX_PHASE_SECONDS:.0f} s, whichever first; "
        f"HSM raw rate: {RAW_SIGN_SECONDS:.0f} s of signing in one process and thread, server "
        "stopped (each worker process has its own)",
        flush=True,
    )
    # One more than the phase needs: the first one is the untimed warm-up request.
    csrs = make_csrs(MAX_REQUESTS + 1)
    rows = [row for algorithm in CA_ALGORITHMS for row in benchmark_algorithm(algorithm, csrs)]
    print()
    print(table(rows))
    print()
    for algorithm in CA_ALGORITHMS:
        print("bound: " + bound_note([r for r in rows if r.algorithm is algorithm]))
    for note in (shared_connection_note(rows), other_load_note(rows)):
        if note is not None:
            print("note: " + note)
    failed = [e for r in rows for e in r.load.errors]
    if failed:
        print(f"\n{len(failed)} request(s) failed; first: {failed[0]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
