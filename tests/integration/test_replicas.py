"""Two replicas, one shared HSM (p11-kit over SoftHSM), one PostgreSQL 15: nothing lost
when a replica dies or the database goes away, and nothing done twice across them."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
import pytest
from cryptography import x509
from kubeca_client.client import IssuedCertificate
from kubeca_client.errors import Aborted, KubecaError, Unavailable
from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key

from tests.postgres_server import PASSWORD, remove_postgres, start_postgres
from tests.replica_cluster import (
    Cluster,
    P11KitServer,
    RemoteToken,
    remove,
    replica_config,
    short_tempdir,
)
from tests.support import BIN, RunningServer, make_token, run_server_cli

pytestmark = pytest.mark.integration

CLIENTS = 16


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("replicas")
    made = make_token(base / "softhsm", label="kubeca-shared")
    token = RemoteToken(made.dir, made.label)
    hsm = P11KitServer(made, short_tempdir("kubeca-p11-")).start()
    postgres = start_postgres()
    replicas: list[RunningServer] = []
    try:
        # One server on SQLite first, with some history: what a deployment that
        # outgrows one machine has.
        single = replica_config(
            base / "single", token, hsm, f"sqlite:///{base / 'single' / 'kubeca.db'}", None
        )
        run_server_cli(single, token, "init")
        first = RunningServer(single, token).start()
        with first.client() as client:
            before = client.issue_certificate("admin", _csr())
        first.stop()

        url = postgres.create_database("kubeca")
        password = base / "db-password"
        password.write_text(PASSWORD + "\n")
        password.chmod(0o600)
        configs = [replica_config(base / name, token, hsm, url, password) for name in ("a", "b")]
        copied = run_server_cli(configs[0], token, "store", "copy", "--from", str(single))
        assert "the copy verifies" in copied.stdout, copied.stdout + copied.stderr
        for config in configs:
            run_server_cli(config, token, "init")
        replicas = [RunningServer(config, token) for config in configs]
        cluster = Cluster(postgres, url, hsm, replicas, base)
        cluster.ensure_running()
        # The history came along: the certificate issued on SQLite is in PostgreSQL.
        store = cluster.store()
        try:
            with store.unit(read_only=True) as unit:
                assert unit.inventory.find(before.serial) is not None
        finally:
            store.close()
        yield cluster
    finally:
        for replica in replicas:
            replica.stop()
        hsm.stop()
        remove(hsm.directory)
        remove_postgres(postgres)


def _csr() -> bytes:
    return build_csr(generate_private_key(KeyAlgorithm.ECDSA_P256))


@dataclass
class Load:
    """Operator clients issuing new certificates in a loop until stopped."""

    cluster: Cluster
    clients: int
    timeout: float = 20
    stop: threading.Event = field(default_factory=threading.Event)
    issued: list[tuple[float, str, IssuedCertificate]] = field(default_factory=list)
    failed: list[tuple[float, KubecaError]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, index: int) -> None:
        # Half the clients know the replicas as (a, b), half as (b, a): both serve.
        order = [0, 1] if index % 2 == 0 else [1, 0]
        with self.cluster.client(order, self.timeout) as client:
            while not self.stop.is_set():
                try:
                    issued = client.issue_certificate("admin", _csr())
                except KubecaError as exc:
                    with self.lock:
                        self.failed.append((time.monotonic(), exc))
                    continue
                with self.lock:
                    self.issued.append((time.monotonic(), client.address, issued))

    def count(self, after: float = 0) -> int:
        with self.lock:
            return sum(1 for t, _, _ in self.issued if t > after)

    def wait_for(self, n: int, after: float = 0, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.count(after) < n:
            assert time.monotonic() < deadline, f"only {self.count(after)} of {n} issued"
            time.sleep(0.05)


@dataclass
class Running:
    load: Load
    pool: ThreadPoolExecutor

    def finish(self) -> None:
        self.load.stop.set()
        self.pool.shutdown(wait=True)


def start_load(cluster: Cluster, clients: int, timeout: float = 20) -> Running:
    load = Load(cluster, clients, timeout)
    pool = ThreadPoolExecutor(clients)
    for i in range(clients):
        pool.submit(load.run, i)
    return Running(load, pool)


def assert_recorded(cluster: Cluster, certificates: list[IssuedCertificate]) -> None:
    """Every certificate a client received is in the inventory, issued by a record of
    the chain naming its serial; no serial was issued twice."""
    store = cluster.store()
    try:
        with store.unit(read_only=True) as unit:
            rows = []
            while batch := unit.audit.rows(rows[-1].seq if rows else 0, 5000):
                rows.extend(batch)
            found = {c.serial: unit.inventory.find(c.serial) for c in certificates}
    finally:
        store.close()
    by_seq = {row.seq: row.fields() for row in rows}
    for serial, row in found.items():
        assert row is not None, f"{serial} was received but is not in the inventory"
        record = by_seq[row.audit_seq]
        assert record["event"] == "certificate.issued" and record["serial"] == serial
    issued_serials = [
        f["serial"] for f in by_seq.values() if f.get("event") == "certificate.issued"
    ]
    assert len(issued_serials) == len(set(issued_serials)), "a serial was issued twice"


def audit_verify(cluster: Cluster, replica: int) -> subprocess.CompletedProcess[str]:
    server = cluster.replicas[replica]
    return run_server_cli(server.config, server.token, "audit", "verify", check=False)


def test_clients_carry_on_through_one_replica_when_the_other_is_killed(
    cluster: Cluster,
) -> None:
    cluster.ensure_running()
    running = start_load(cluster, CLIENTS)
    try:
        running.load.wait_for(60)
        cluster.kill(0)  # returns once the process is gone
        killed_at = time.monotonic()
        running.load.wait_for(100, after=killed_at)
    finally:
        running.finish()
    load = running.load
    before = {address for t, address, _ in load.issued if t < killed_at}
    assert before == {r.address for r in cluster.replicas}, "both replicas served"
    after = {address for t, address, _ in load.issued if t > killed_at}
    assert after == {cluster.replicas[1].address}
    # A call in flight on the killed replica moves to the other; only one whose claim
    # the dead replica still held can end ABORTED (retry later): at most one a client.
    assert all(isinstance(e, Aborted) for _, e in load.failed), load.failed
    assert len(load.failed) <= CLIENTS
    assert_recorded(cluster, [c for _, _, c in load.issued])
    verified = audit_verify(cluster, 1)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "the audit chain verifies" in verified.stdout


def test_one_token_used_concurrently_through_both_replicas_succeeds_once(
    cluster: Cluster,
) -> None:
    cluster.ensure_running()
    with cluster.client([0, 1]) as operator:
        token = operator.create_bootstrap_token(["kubelet-client"], "worker-1", [], 600).token
    racers = 8
    barrier = threading.Barrier(racers)

    def race(index: int) -> IssuedCertificate | KubecaError:
        csr = _csr()
        with cluster.node(index % 2, token) as node:
            node.ca_certificates()  # connected before the race
            barrier.wait(timeout=30)
            try:
                return node.issue_certificate("kubelet-client", csr, {"node_name": "worker-1"})
            except KubecaError as exc:
                return exc

    with ThreadPoolExecutor(racers) as pool:
        outcomes = list(pool.map(race, range(racers)))
    issued = [o for o in outcomes if isinstance(o, IssuedCertificate)]
    assert len(issued) == 1, outcomes
    assert all(o.status == "UNAUTHENTICATED" for o in outcomes if isinstance(o, KubecaError))
    assert_recorded(cluster, issued)


def test_identical_requests_spread_over_both_replicas_make_one_certificate(
    cluster: Cluster,
) -> None:
    cluster.ensure_running()
    csr = _csr()
    requests = 20
    barrier = threading.Barrier(requests)

    def ask(index: int) -> IssuedCertificate | KubecaError:
        with cluster.client([index % 2]) as client:
            client.profiles()
            barrier.wait(timeout=30)
            try:
                return client.issue_certificate("admin", csr)
            except KubecaError as exc:
                return exc

    with ThreadPoolExecutor(requests) as pool:
        outcomes = list(pool.map(ask, range(requests)))
    issued = [o for o in outcomes if isinstance(o, IssuedCertificate)]
    assert len(issued) == requests, outcomes
    assert len({o.serial for o in issued}) == 1
    assert [o.reused for o in issued].count(False) == 1
    assert_recorded(cluster, issued[:1])


def test_a_database_outage_under_load_loses_nothing_and_both_replicas_recover(
    cluster: Cluster,
) -> None:
    cluster.ensure_running()
    pids = [r.process.pid for r in cluster.replicas if r.process is not None]
    deadline = 3.0
    running = start_load(cluster, 4, timeout=deadline)
    try:
        running.load.wait_for(20)
        cluster.postgres.stop("fast")
        stopped_at = time.monotonic()
        _wait(lambda: not cluster.serving(0) and not cluster.serving(1), "NOT_SERVING")
        # The load goes on against a database that is not there, for longer than a
        # call's deadline: a client retries UNAVAILABLE until then, so a shorter outage
        # can be ridden through without any call failing.
        time.sleep(deadline + 1)
        cluster.postgres.start()
        _wait(lambda: cluster.serving(0) and cluster.serving(1), "SERVING again")
        restarted_at = time.monotonic()
        running.load.wait_for(20, after=restarted_at)
    finally:
        running.finish()
        if not _pg_up(cluster):
            cluster.postgres.start()  # whatever failed above, leave the database up
    load = running.load
    # Nobody restarted the replicas: they came back by themselves.
    assert [r.process.pid for r in cluster.replicas if r.process is not None] == pids
    during = [e for t, e in load.failed if stopped_at <= t <= restarted_at]
    assert during, "calls during the outage failed"
    assert all(isinstance(e, Unavailable | Aborted) for _, e in load.failed), load.failed
    # Nothing left without its record: not before, not during, not after.
    assert_recorded(cluster, [c for _, _, c in load.issued])
    for replica in (0, 1):
        with cluster.client([replica]) as client:
            assert client.issue_certificate("admin", _csr()).serial


def test_a_revocation_through_one_replica_is_in_the_crl_the_other_publishes(
    cluster: Cluster,
) -> None:
    cluster.ensure_running()
    with cluster.client([0]) as a:
        issued = a.issue_certificate("admin", _csr())
        revoked = a.revoke_certificate(issued.serial, "key_compromise")
    with cluster.client([1]) as b:
        crl = b.crl(revoked.authority)
    assert crl.number >= revoked.crl_number
    listed = x509.load_der_x509_crl(crl.der)
    assert listed.get_revoked_certificate_by_serial_number(int(issued.serial, 16)) is not None
    # And in the file the other replica publishes for relying parties (etcd) to read.
    on_disk = cluster.replicas[1].state_dir / "crl" / f"{revoked.authority}.crl"
    published = x509.load_der_x509_crl(on_disk.read_bytes())
    assert published.get_revoked_certificate_by_serial_number(int(issued.serial, 16)) is not None


def _pg_up(cluster: Cluster) -> bool:
    try:
        cluster.postgres.wait_ready(timeout=1)
    except psycopg.OperationalError:
        return False
    return True


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"the replicas did not report {what}"
        time.sleep(0.2)


def test_checkpoints_signed_by_both_replicas_at_once_each_name_a_head_of_the_one_chain(
    cluster: Cluster,
) -> None:
    cluster.ensure_running()
    with cluster.client([0, 1]) as client:
        client.issue_certificate("admin", _csr())  # something new to sign
    signers = [
        subprocess.Popen(
            [str(BIN / "kubeca-server"), "--config", str(r.config), "audit", "checkpoint"],
            env=r.token.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in cluster.replicas
    ]
    outputs = [signer.communicate(timeout=120) for signer in signers]
    assert [signer.returncode for signer in signers] == [0, 0], outputs
    store = cluster.store()
    try:
        with store.unit(read_only=True) as unit:
            checkpoints = unit.checkpoints.all()
            by_seq = {}
            for checkpoint in checkpoints:
                rows = unit.audit.rows(checkpoint.seq - 1, 1)
                by_seq[checkpoint.seq] = rows[0].hash if rows else None
    finally:
        store.close()
    assert checkpoints
    assert all(by_seq[c.seq] == c.head_hash for c in checkpoints)
    verified = audit_verify(cluster, 0)
    assert verified.returncode == 0, verified.stdout + verified.stderr
