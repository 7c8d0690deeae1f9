"""The store contract: what every Store implementation must do, the same way.

Each test runs against every implementation (the ``backend`` parameter). Tests that
need several processes on one store run against the implementations that several
processes can share (not the in-memory one, which lives in one process by design):
they are parametrized over ``SHARED`` only, so none is skipped.

A new store joins by adding one entry to ``SHARED``. PostgreSQL runs as a real server
(tests/postgres_server.py), one per session, with a fresh database for each test.
"""

from __future__ import annotations

import dataclasses
import itertools
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubeca_client.errors import NotFound
from kubeca_server.ledger.chain import GENESIS, Checkpoint, first_broken_link
from kubeca_server.store import (
    CertificateRow,
    GenerationRow,
    GenerationState,
    InventoryCursor,
    InventoryQuery,
    Provenance,
    Store,
    TokenCursor,
    TokenRecord,
)
from kubeca_server.store.changes import AddCertificate, RevokeCertificate
from kubeca_server.store.memory import MemoryStore
from kubeca_server.store.postgres import PostgresStore
from kubeca_server.store.sqlite import SQLiteStore

from tests.postgres_server import PASSWORD, PostgresServer

T0 = datetime(2030, 1, 1, tzinfo=UTC)
THREADS = 16
PROCESSES = 4


@dataclass(frozen=True)
class Opener:
    """How to open (another connection to) one store; picklable, for child processes."""

    kind: str
    location: str

    def open(self) -> Store:
        if self.kind == "sqlite":
            return SQLiteStore(Path(self.location))
        if self.kind == "postgresql":
            return PostgresStore(self.location, password=PASSWORD)
        raise AssertionError(f"no opener for {self.kind}")


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    path = tmp_path / "contract.db"
    SQLiteStore(path, migrate=True).close()
    return Opener("sqlite", str(path))


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    server: PostgresServer = request.getfixturevalue("postgres")
    url = server.create_database()
    PostgresStore(url, password=PASSWORD, migrate=True).close()
    return Opener("postgresql", url)


SHARED: dict[str, Callable[[pytest.FixtureRequest, Path], Opener]] = {
    "sqlite": _sqlite,
    "postgresql": _postgres,
}
ALL = ("memory", *SHARED)


@pytest.fixture(params=ALL)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened: Store = (
        MemoryStore()
        if request.param == "memory"
        else SHARED[request.param](request, tmp_path).open()
    )
    yield opened
    opened.close()


@pytest.fixture(params=list(SHARED))
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    return SHARED[request.param](request, tmp_path)


def certificate(serial: str, **changes: Any) -> CertificateRow:
    fields: dict[str, Any] = {
        "serial": serial,
        "authority": "etcd-ca",
        "profile": "etcd-healthcheck-client",
        "subject": "CN=kube-etcd-healthcheck-client",
        "sans": ("a.example", "10.0.0.1"),
        "public_key_sha256": "ab" * 32,
        "fingerprint_sha256": f"fp-{serial}",
        "not_before": T0,
        "not_after": T0 + timedelta(days=30),
        "caller": "op",
        "request_fingerprint": f"request-{serial}",
        "certificate_pem": "PEM",
        "issuer_key_id": "11" * 20,
    }
    fields.update(changes)
    return CertificateRow(**fields)


def token(token_id: str = "abcdef", **changes: Any) -> TokenRecord:  # noqa: S107  # an id
    fields: dict[str, Any] = {
        "token_id": token_id,
        "secret_hash": "00" * 32,
        "profiles": ("kubelet-client", "kubelet-serving"),
        "node_name": "worker-1",
        "addresses": ("10.0.0.21",),
        "expires_at": T0 + timedelta(hours=1),
        "created_by": "op",
        "created_at": T0,
        "max_lifetime": timedelta(days=30),
    }
    fields.update(changes)
    return TokenRecord(**fields)


def append(store: Store, n: int, **fields: Any) -> None:
    for i in range(n):
        with store.unit() as unit:
            unit.audit.append({"event": "e", "n": i, **fields})


def chain(store: Store) -> list[Any]:
    with store.unit(read_only=True) as unit:
        return unit.audit.rows(0, 100_000)


# --- the audit chain --------------------------------------------------------------------


def test_the_chain_numbers_records_from_one_and_links_each_to_the_last(store: Store) -> None:
    append(store, 5)
    rows = chain(store)
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    assert first_broken_link(rows) is None
    assert [r.fields()["n"] for r in rows] == [0, 1, 2, 3, 4]
    with store.unit(read_only=True) as unit:
        assert unit.audit.head() == rows[-1]


def test_rows_come_in_pages_after_a_sequence_number(store: Store) -> None:
    append(store, 7)
    with store.unit(read_only=True) as unit:
        assert [r.seq for r in unit.audit.rows(2, 3)] == [3, 4, 5]
        assert [r.seq for r in unit.audit.rows(5, 100)] == [6, 7]
        assert unit.audit.rows(7, 100) == []


def test_a_unit_that_raises_commits_nothing(store: Store) -> None:
    append(store, 1)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.unit() as unit:
        row = unit.audit.append({"event": "lost"})
        AddCertificate(certificate("aa")).apply(unit, row.seq)
        raise Boom
    assert [r.seq for r in chain(store)] == [1]
    with store.unit(read_only=True) as unit:
        assert unit.inventory.find("aa") is None


def test_a_record_and_its_change_commit_together(store: Store) -> None:
    with store.unit() as unit:
        unit.claims.claim("request-aa", T0, T0 - timedelta(seconds=30))
    with store.unit() as unit:
        row = unit.audit.append({"event": "certificate.issued", "serial": "aa"})
        AddCertificate(certificate("aa")).apply(unit, row.seq)
    with store.unit(read_only=True) as unit:
        found = unit.inventory.find("aa")
        assert found is not None and found.audit_seq == row.seq
    # The certificate's record ended its idempotency claim in the same transaction.
    with store.unit() as unit:
        assert unit.claims.claim("request-aa", T0, T0 - timedelta(seconds=30))


def test_concurrent_appends_from_threads_make_one_unbroken_chain(store: Store) -> None:
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda i: append(store, 5, thread=i), range(THREADS)))
    rows = chain(store)
    assert len(rows) == 5 * THREADS
    assert first_broken_link(rows) is None


def _append_in_child(opener: Opener, count: int, tag: int) -> None:
    store = opener.open()
    try:
        append(store, count, process=tag)
    finally:
        store.close()


def test_concurrent_appends_from_processes_make_one_unbroken_chain(shared: Opener) -> None:
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_append_in_child, args=(shared, 25, i)) for i in range(PROCESSES)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    store = shared.open()
    try:
        rows = chain(store)
    finally:
        store.close()
    assert len(rows) == 25 * PROCESSES
    assert first_broken_link(rows) is None
    assert {r.fields()["process"] for r in rows} == set(range(PROCESSES))


def _commit_then_die(opener: Opener, ready: Any) -> None:
    store = opener.open()
    with store.unit() as unit:
        row = unit.audit.append({"event": "durable"})
        AddCertificate(certificate("dd")).apply(unit, row.seq)
    ready.set()
    # Wait to be killed: whatever was committed must survive kill -9 of its writer.
    threading.Event().wait(60)


def test_a_committed_record_survives_the_death_of_its_writer(shared: Opener) -> None:
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    child = context.Process(target=_commit_then_die, args=(shared, ready))
    child.start()
    assert ready.wait(60)
    assert child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    store = shared.open()
    try:
        rows = chain(store)
        with store.unit(read_only=True) as unit:
            found = unit.inventory.find("dd")
    finally:
        store.close()
    assert [r.fields()["event"] for r in rows] == ["durable"]
    assert found is not None and found.audit_seq == rows[0].seq


# --- idempotency claims -----------------------------------------------------------------


def _claim(store: Store, fingerprint: str, now: datetime = T0) -> bool:
    with store.unit() as unit:
        return unit.claims.claim(fingerprint, now, now - timedelta(seconds=30))


def test_of_many_threads_claiming_one_request_exactly_one_holds_it(store: Store) -> None:
    with ThreadPoolExecutor(THREADS) as pool:
        won = list(pool.map(lambda _: _claim(store, "request-1"), range(THREADS)))
    assert won.count(True) == 1


def _claim_in_child(opener: Opener, fingerprint: str, results: Any) -> None:
    store = opener.open()
    try:
        results.put(_claim(store, fingerprint))
    finally:
        store.close()


def test_of_many_processes_claiming_one_request_exactly_one_holds_it(shared: Opener) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    children = [
        context.Process(target=_claim_in_child, args=(shared, "request-1", results))
        for _ in range(PROCESSES)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(30)
    assert outcomes.count(True) == 1


def test_a_released_or_stale_claim_can_be_taken_again(store: Store) -> None:
    assert _claim(store, "request-1")
    assert not _claim(store, "request-1")
    with store.unit() as unit:
        unit.claims.release("request-1")
    assert _claim(store, "request-1")
    # A claim older than the stale limit belongs to a worker that died.
    assert _claim(store, "request-1", T0 + timedelta(seconds=31))


# --- bootstrap tokens -------------------------------------------------------------------


def test_pages_of_live_tokens_go_latest_expiry_first_and_resume_after_their_cursor(
    store: Store,
) -> None:
    with store.unit() as unit:
        for n in range(25):
            unit.tokens.add(token(f"t{n:05d}", expires_at=T0 + timedelta(minutes=n % 7 + 1)))
        unit.tokens.add(token("gone00", expires_at=T0 - timedelta(seconds=1)))
    expected = sorted(
        ((T0 + timedelta(minutes=n % 7 + 1), f"t{n:05d}") for n in range(25)), reverse=True
    )
    seen: list[tuple[datetime, str]] = []
    cursor = None
    with store.unit(read_only=True) as unit:
        while page := unit.tokens.page(T0, cursor, 4):
            assert len(page) <= 4
            seen.extend((t.expires_at, t.token_id) for t in page)
            cursor = TokenCursor(page[-1].expires_at, page[-1].token_id)
    assert seen == expected, "every live token once, in order; the expired one never"


def test_a_token_is_found_listed_and_revoked_once(store: Store) -> None:
    with store.unit() as unit:
        unit.tokens.add(token("aaaaaa", created_at=T0))
        unit.tokens.add(token("bbbbbb", created_at=T0 + timedelta(minutes=1)))
        unit.tokens.add(token("cccccc", expires_at=T0 - timedelta(seconds=1)))
    with store.unit() as unit:
        found = unit.tokens.find("aaaaaa")
        assert found is not None and found.profiles == ("kubelet-client", "kubelet-serving")
        assert found.max_lifetime == timedelta(days=30)
        # Not expired, the latest to expire first (then by id).
        assert [t.token_id for t in unit.tokens.page(T0, None, 10)] == ["bbbbbb", "aaaaaa"]
        assert unit.tokens.revoke("aaaaaa", T0)
        assert not unit.tokens.revoke("aaaaaa", T0)
        assert not unit.tokens.revoke("nobody", T0)
        revoked = unit.tokens.find("aaaaaa")
        assert revoked is not None and revoked.revoked


def _consume(store: Store, profile: str = "kubelet-client") -> bool:
    with store.unit() as unit:
        return unit.tokens.consume("abcdef", profile, T0)


def test_of_many_threads_using_one_token_for_one_profile_exactly_one_succeeds(
    store: Store,
) -> None:
    with store.unit() as unit:
        unit.tokens.add(token())
    with ThreadPoolExecutor(THREADS) as pool:
        won = list(pool.map(lambda _: _consume(store), range(THREADS)))
    assert won.count(True) == 1
    # The other profile is still there for its own single use.
    assert _consume(store, "kubelet-serving")
    with store.unit(read_only=True) as unit:
        used = unit.tokens.find("abcdef")
    assert used is not None
    assert used.used_profiles == ("kubelet-client", "kubelet-serving")


def _consume_in_child(opener: Opener, results: Any) -> None:
    store = opener.open()
    try:
        results.put(_consume(store))
    finally:
        store.close()


def test_of_many_processes_using_one_token_exactly_one_succeeds(shared: Opener) -> None:
    store = shared.open()
    with store.unit() as unit:
        unit.tokens.add(token())
    store.close()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    children = [
        context.Process(target=_consume_in_child, args=(shared, results)) for _ in range(PROCESSES)
    ]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(30)
    assert outcomes.count(True) == 1


def test_a_token_is_not_used_when_revoked_expired_or_for_another_profile(store: Store) -> None:
    with store.unit() as unit:
        unit.tokens.add(token("abcdef"))
    with store.unit() as unit:
        assert not unit.tokens.consume("abcdef", "admin", T0)
        assert not unit.tokens.consume("abcdef", "kubelet-client", T0 + timedelta(hours=2))
        unit.tokens.revoke("abcdef", T0)
        assert not unit.tokens.consume("abcdef", "kubelet-client", T0)


def test_a_released_use_can_be_taken_again(store: Store) -> None:
    with store.unit() as unit:
        unit.tokens.add(token())
    assert _consume(store)
    assert not _consume(store)
    with store.unit() as unit:
        unit.tokens.release("abcdef", "kubelet-client")
    assert _consume(store)


# --- CRL numbers -------------------------------------------------------------------------


def _next(store: Store, authority: str = "etcd-ca") -> int:
    with store.unit() as unit:
        return unit.crl_numbers.next(authority)


def test_crl_numbers_only_go_up_and_are_each_handed_out_once(store: Store) -> None:
    with store.unit(read_only=True) as unit:
        assert unit.crl_numbers.current("etcd-ca") == 0
    with ThreadPoolExecutor(THREADS) as pool:
        numbers = list(pool.map(lambda _: _next(store), range(THREADS * 2)))
    assert sorted(numbers) == list(range(1, THREADS * 2 + 1))
    assert _next(store, "kubernetes-ca") == 1  # each CA counts on its own
    with store.unit(read_only=True) as unit:
        assert unit.crl_numbers.current("etcd-ca") == THREADS * 2


def _numbers_in_child(opener: Opener, results: Any) -> None:
    store = opener.open()
    try:
        results.put([_next(store) for _ in range(10)])
    finally:
        store.close()


def test_crl_numbers_from_several_processes_never_repeat_or_go_back(shared: Opener) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    children = [
        context.Process(target=_numbers_in_child, args=(shared, results)) for _ in range(PROCESSES)
    ]
    for child in children:
        child.start()
    sequences = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(30)
    assert all(seq == sorted(seq) for seq in sequences)  # each caller sees them rise
    every = [n for seq in sequences for n in seq]
    assert sorted(every) == list(range(1, 10 * PROCESSES + 1))


# --- the inventory ------------------------------------------------------------------------


def _add(store: Store, *rows: CertificateRow) -> None:
    for row in rows:
        with store.unit() as unit:
            seq = unit.audit.append({"event": "certificate.issued", "serial": row.serial}).seq
            AddCertificate(row).apply(unit, seq)


def test_a_certificate_is_found_and_revoked_once(store: Store) -> None:
    _add(store, certificate("aa"))
    with store.unit() as unit:
        row = unit.inventory.find("aa")
        assert row is not None
        assert row.sans == ("a.example", "10.0.0.1") and row.issuer_key_id == "11" * 20
        assert unit.inventory.revoke("aa", T0, "key_compromise")
        assert not unit.inventory.revoke("aa", T0, "key_compromise")
        assert not unit.inventory.revoke("zz", T0, "key_compromise")
    with store.unit(read_only=True) as unit:
        revoked = unit.inventory.find("aa")
        assert revoked is not None
        assert revoked.revoked_at == T0 and revoked.revocation_reason == "key_compromise"
        assert [r.serial for r in unit.inventory.revoked("etcd-ca")] == ["aa"]
        assert unit.inventory.revoked("kubernetes-ca") == []


def test_a_revocation_change_of_an_unknown_serial_rolls_its_record_back(store: Store) -> None:
    with pytest.raises(NotFound), store.unit() as unit:
        seq = unit.audit.append({"event": "certificate.revoked"}).seq
        RevokeCertificate("zz", T0, "superseded").apply(unit, seq)
    assert chain(store) == []


def test_the_current_certificate_of_a_request_is_one_outside_its_renewal_window(
    store: Store,
) -> None:
    # 30 days of life: renewal begins after 20.
    _add(store, certificate("aa", request_fingerprint="r"))
    with store.unit(read_only=True) as unit:
        found = unit.inventory.current("r", T0 + timedelta(days=19))
        assert found is not None and found.serial == "aa"
        assert unit.inventory.current("r", T0 + timedelta(days=21)) is None
        assert unit.inventory.current("other", T0) is None
    with store.unit() as unit:
        unit.inventory.revoke("aa", T0, "superseded")
    with store.unit(read_only=True) as unit:
        assert unit.inventory.current("r", T0) is None


def test_the_newest_current_certificate_of_a_request_wins(store: Store) -> None:
    _add(
        store,
        certificate("aa", request_fingerprint="r"),
        certificate("bb", request_fingerprint="r", not_before=T0 + timedelta(days=1)),
    )
    with store.unit(read_only=True) as unit:
        found = unit.inventory.current("r", T0 + timedelta(days=2))
    assert found is not None and found.serial == "bb"


def test_pages_of_the_inventory_follow_expiry_and_resume_after_their_cursor(
    store: Store,
) -> None:
    rows = [
        certificate(f"{i:02x}", not_after=T0 + timedelta(days=30 + i % 5), profile=p)
        for i, p in zip(range(20), ["admin", "kube-proxy"] * 10, strict=True)
    ]
    _add(store, *rows)
    expected = sorted(rows, key=lambda r: (r.not_after, r.serial))
    seen: list[str] = []
    cursor = None
    while True:
        with store.unit(read_only=True) as unit:
            page = unit.inventory.page(InventoryQuery(), cursor, 6)
        if not page:
            break
        assert len(page) <= 6
        seen += [r.serial for r in page]
        cursor = InventoryCursor(page[-1].not_after, page[-1].serial)
    assert seen == [r.serial for r in expected]
    with store.unit(read_only=True) as unit:
        proxies = unit.inventory.page(InventoryQuery(profile="kube-proxy"), None, 100)
        soon = unit.inventory.page(
            InventoryQuery(expiring_before=T0 + timedelta(days=30)), None, 100
        )
    assert {r.profile for r in proxies} == {"kube-proxy"} and len(proxies) == 10
    assert all(r.not_after <= T0 + timedelta(days=30) for r in soon) and len(soon) == 4


def test_a_page_of_revoked_certificates_holds_only_those(store: Store) -> None:
    _add(store, certificate("aa"), certificate("bb"), certificate("cc", authority="kubernetes-ca"))
    with store.unit() as unit:
        unit.inventory.revoke("bb", T0, "superseded")
    with store.unit(read_only=True) as unit:
        revoked = unit.inventory.page(InventoryQuery(revoked_only=True), None, 10)
        by_ca = unit.inventory.page(InventoryQuery(authority="kubernetes-ca"), None, 10)
    assert [r.serial for r in revoked] == ["bb"]
    assert [r.serial for r in by_ca] == ["cc"]


def test_unexpired_unrevoked_certificates_are_counted_by_generation_and_profile(
    store: Store,
) -> None:
    old, new = "11" * 20, "22" * 20
    _add(
        store,
        certificate("a1", issuer_key_id=old, profile="admin"),
        certificate("a2", issuer_key_id=old, profile="admin"),
        certificate("a3", issuer_key_id=old, profile="kube-proxy"),
        certificate("a4", issuer_key_id=old, not_after=T0 + timedelta(hours=1)),
        certificate("b1", issuer_key_id=new, profile="admin"),
    )
    with store.unit() as unit:
        unit.inventory.revoke("a2", T0, "superseded")
    with store.unit(read_only=True) as unit:
        counts = unit.inventory.count_unexpired("etcd-ca", old, T0 + timedelta(days=1))
    assert counts == {"admin": 1, "kube-proxy": 1}


# --- checkpoints and CA generations -----------------------------------------------------


def test_checkpoints_are_kept_in_order(store: Store) -> None:
    with store.unit() as unit:
        unit.checkpoints.add(Checkpoint(5, "h5", T0, b"sig5"))
        unit.checkpoints.add(Checkpoint(2, "h2", T0, b"sig2"))
    with store.unit(read_only=True) as unit:
        assert unit.checkpoints.all() == [
            Checkpoint(2, "h2", T0, b"sig2"),
            Checkpoint(5, "h5", T0, b"sig5"),
        ]


def test_ca_generations_are_kept_and_change_state(store: Store) -> None:
    first = GenerationRow(
        "etcd-ca", 1, "kubeca/etcd-ca", "PEM1", GenerationState.ISSUING, Provenance.GENERATED, T0
    )
    second = dataclasses.replace(
        first,
        generation=2,
        key_label="kubeca/etcd-ca/2",
        certificate_pem="PEM2",
        state=GenerationState.TRUSTED,
        provenance=Provenance.IMPORTED,
    )
    with store.unit() as unit:
        unit.generations.add(second)
        unit.generations.add(first)
    with store.unit() as unit:
        assert unit.generations.all() == [first, second]
        unit.generations.set_state("etcd-ca", 2, GenerationState.ISSUING, T0)
        unit.generations.set_state("etcd-ca", 1, GenerationState.TRUSTED, T0)
    with store.unit(read_only=True) as unit:
        states = [(g.generation, g.state) for g in unit.generations.all()]
    assert states == [(1, GenerationState.TRUSTED), (2, GenerationState.ISSUING)]


def test_a_generation_keeps_its_cross_certificate_and_state_change_time(store: Store) -> None:
    later = T0 + timedelta(hours=3)
    row = GenerationRow(
        "kubernetes-ca",
        2,
        "kubeca/kubernetes-ca/2",
        "PEM2",
        GenerationState.TRUSTED,
        Provenance.GENERATED,
        T0,
        cross_certificate_pem="CROSS",
    )
    with store.unit() as unit:
        unit.generations.add(row)
    with store.unit(read_only=True) as unit:
        (kept,) = unit.generations.all()
    assert kept.cross_certificate_pem == "CROSS"
    assert kept.state_changed_at is None
    with store.unit() as unit:
        unit.generations.set_state("kubernetes-ca", 2, GenerationState.ISSUING, later)
    with store.unit(read_only=True) as unit:
        (changed,) = unit.generations.all()
    assert changed.state is GenerationState.ISSUING
    assert changed.state_changed_at == later
    assert changed.cross_certificate_pem == "CROSS"


def test_changing_the_state_of_a_missing_generation_is_refused(store: Store) -> None:
    with pytest.raises(NotFound), store.unit() as unit:
        unit.generations.set_state("etcd-ca", 9, GenerationState.RETIRED, T0)


def test_a_store_that_answers_passes_its_probe(store: Store) -> None:
    store.probe()  # raises Unavailable when it cannot answer
