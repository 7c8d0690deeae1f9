"""Two replicas on PostgreSQL beside one server on SQLite, and what one total order of
the audit chain costs.

    .venv/bin/python bench/replicas.py        (what `make bench-replicas` runs)

Rows, each for ECDSA-P256 CA keys and 16 client threads (one connection each) for a
fixed time, asking for new certificates (a fresh CSR each, so no answer is a reuse):

- one server, the embedded SQLite store, SoftHSM loaded directly;
- two replicas, one PostgreSQL 15, one SoftHSM token behind p11-kit's server (the
  network HSM stand-in), half the clients knowing the replicas as (a, b), half (b, a).

Then the chain alone: appends per second, one unit of work (one transaction, one fsync)
each, from one thread and from 2 processes at once, into SQLite and into PostgreSQL.
In PostgreSQL appends from every replica queue on one advisory lock: this is its cost,
before the ledger's group commit shares it across a batch.

Everything runs on this machine: the clients' Python threads, the replicas, the
p11-kit server and PostgreSQL share its cores, so the figures compare the two set-ups
here; they are not the capacity of a deployment on several hosts.
"""

from __future__ import annotations

import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kubeca_client.client import Client  # noqa: E402
from kubeca_client.errors import KubecaError  # noqa: E402
from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key  # noqa: E402
from kubeca_server.store.postgres import PostgresStore  # noqa: E402
from kubeca_server.store.roles import Store  # noqa: E402
from kubeca_server.store.sqlite import SQLiteStore  # noqa: E402

from tests.postgres_server import PASSWORD, remove_postgres, start_postgres  # noqa: E402
from tests.replica_cluster import (  # noqa: E402
    P11KitServer,
    RemoteToken,
    remove,
    replica_config,
    short_tempdir,
)
from tests.support import (  # noqa: E402
    RunningServer,
    make_token,
    run_server_cli,
    write_server_config,
)

CLIENTS = 16
SECONDS = 10.0
APPEND_SECONDS = 5.0


@dataclass(frozen=True)
class Result:
    name: str
    issued: int
    failed: int
    seconds: float
    latencies: Sequence[float]

    def cells(self) -> str:
        ordered = sorted(self.latencies) or [0.0]
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"| {self.name} | {self.issued / self.seconds:.0f} | "
            f"{statistics.median(ordered) * 1000:.0f} ms | {p99 * 1000:.0f} ms | {self.failed} |"
        )


def load(name: str, servers: Sequence[RunningServer]) -> Result:
    csrs = [build_csr(generate_private_key(KeyAlgorithm.ECDSA_P256)) for _ in range(6000)]
    stop = threading.Event()
    lock = threading.Lock()
    latencies: list[float] = []
    failed = [0]
    barrier = threading.Barrier(CLIENTS + 1)

    def drive(index: int) -> None:
        order = list(servers) if index % 2 == 0 else list(reversed(servers))
        client = Client(
            [s.address for s in order],
            30,
            (("grpc.use_local_subchannel_pool", 1),),
            credentials=order[0].credentials(),
        )
        with client:
            client.profiles()
            barrier.wait()
            while not stop.is_set():
                with lock:
                    if not csrs:
                        return
                    csr = csrs.pop()
                started = time.perf_counter()
                try:
                    client.issue_certificate("admin", csr)
                except KubecaError:
                    with lock:
                        failed[0] += 1
                    continue
                with lock:
                    latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=drive, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    time.sleep(SECONDS)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return Result(name, len(latencies), failed[0], elapsed, latencies)


def single_on_sqlite(base: Path) -> Result:
    token = make_token(base / "softhsm-single")
    config = write_server_config(base / "single", token)
    run_server_cli(config, token, "init")
    server = RunningServer(config, token).start()
    try:
        return load("1 server, SQLite, SoftHSM", [server])
    finally:
        server.stop()


def two_on_postgres(base: Path) -> Result:
    made = make_token(base / "softhsm-shared", label="kubeca-bench")
    token = RemoteToken(made.dir, made.label)
    hsm = P11KitServer(made, short_tempdir("kubeca-p11-")).start()
    postgres = start_postgres()
    servers: list[RunningServer] = []
    try:
        url = postgres.create_database("kubeca")
        password = base / "db-password"
        password.write_text(PASSWORD)
        password.chmod(0o600)
        for name in ("a", "b"):
            config = replica_config(base / name, token, hsm, url, password)
            run_server_cli(config, token, "init")
            servers.append(RunningServer(config, token).start())
        return load("2 replicas, PostgreSQL, p11-kit HSM", servers)
    finally:
        for server in servers:
            server.stop()
        hsm.stop()
        remove(hsm.directory)
        remove_postgres(postgres)


def _appends(opener: tuple[str, str], seconds: float, out: multiprocessing.Queue[int]) -> None:
    kind, where = opener
    store: Store = (
        SQLiteStore(Path(where)) if kind == "sqlite" else PostgresStore(where, password=PASSWORD)
    )
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        with store.unit() as unit:
            unit.audit.append({"event": "bench.append", "n": done})
        done += 1
    store.close()
    out.put(done)


def append_rate(opener: tuple[str, str], processes: int) -> float:
    context = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[int] = context.Queue()
    children = [
        context.Process(target=_appends, args=(opener, APPEND_SECONDS, out))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    total = sum(out.get(timeout=120) for _ in children)
    for child in children:
        child.join()
    return total / APPEND_SECONDS


def chain_rows(base: Path) -> list[str]:
    path = base / "append.db"
    SQLiteStore(path, migrate=True).close()
    postgres = start_postgres()
    try:
        url = postgres.create_database("appends")
        PostgresStore(url, password=PASSWORD, migrate=True).close()
        rows = []
        for name, opener in (("SQLite", ("sqlite", str(path))), ("PostgreSQL", ("pg", url))):
            one = append_rate(opener, 1)
            two = append_rate(opener, 2)
            rows.append(f"| {name} | {one:.0f} | {two:.0f} |")
        return rows
    finally:
        remove_postgres(postgres)


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="kubeca-bench-replicas-"))
    try:
        results = [single_on_sqlite(base), two_on_postgres(base)]
        appends = chain_rows(base)
    finally:
        remove(base)
    print(f"## Issuance, ECDSA-P256, {CLIENTS} clients, {SECONDS:.0f} s")
    print("| set-up | certs/s | p50 | p99 | failed |")
    print("|---|---|---|---|---|")
    for result in results:
        print(result.cells())
    print()
    print(f"## The audit chain alone: appends/s, one transaction each, {APPEND_SECONDS:.0f} s")
    print("| store | 1 process | 2 processes |")
    print("|---|---|---|")
    for row in appends:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
