"""ledger.py and store.py: the hash chain, signed checkpoints, the inventory, idempotent
issuance and revocation, over a real SQLite file and in-memory CA keys (no HSM)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from kubeca_client.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from kubeca_server.audit import AuditLog
from kubeca_server.authorities import CertificateAuthority, load_authorities
from kubeca_server.authority import Authority, Caller, IssuedCertificate, IssueRequest
from kubeca_server.config import SERVICE_CA
from kubeca_server.ledger import (
    GENESIS,
    ChainRow,
    InventoryEntry,
    canonical,
    checkpoint_is_genuine,
    first_broken_link,
    link_hash,
    sign_checkpoint,
    verify,
)
from kubeca_server.lint import Linter
from kubeca_server.runtime import checkpoint
from kubeca_server.store import CertificateRow, SQLiteStore

from tests.unit.conftest import EVERYTHING, GRANTS, CASet
from tests.unit.helpers import make_csr, read_audit, rsa_key

CALLER = Caller(EVERYTHING.identity)
REVOKER_GRANTS = {EVERYTHING.identity: dataclasses.replace(EVERYTHING, revoke=True)}
T0 = datetime(2030, 1, 1, tzinfo=UTC)


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "state" / "kubeca.db")
    yield opened
    opened.close()


@pytest.fixture
def ledger_audit(tmp_path: Path, store: SQLiteStore) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.log", store)
    yield log
    log.close()


@pytest.fixture(scope="session")
def service_ca(ca_set: CASet) -> CertificateAuthority:
    return load_authorities(ca_set.config, ca_set.backend)[SERVICE_CA]


AuthorityMaker = Callable[..., Authority]


@pytest.fixture
def make_ledger_authority(
    ca_set: CASet, ledger_audit: AuditLog, store: SQLiteStore, linter: Linter
) -> AuthorityMaker:
    """An Authority with an inventory, as the server builds it."""

    def make(**options: Any) -> Authority:
        options.setdefault("grants", GRANTS)
        return Authority(
            ca_set.authorities, ca_set.config.leaf, ledger_audit, linter, store=store, **options
        )

    return make


def rows_of(count: int) -> list[ChainRow]:
    """A well-formed chain of ``count`` records, built by hand."""
    rows, prev = [], GENESIS
    for seq in range(1, count + 1):
        body = canonical({"event": "e", "n": seq, "seq": seq})
        rows.append(ChainRow(seq, body, prev, link_hash(prev, body)))
        prev = rows[-1].hash
    return rows


def rechained(rows: list[ChainRow]) -> list[ChainRow]:
    """``rows`` with every link recomputed, as someone with write access could."""
    out, prev = [], GENESIS
    for row in rows:
        out.append(ChainRow(row.seq, row.record, prev, link_hash(prev, row.record)))
        prev = out[-1].hash
    return out


def inventory_row(serial: str, **changes: Any) -> CertificateRow:
    fields: dict[str, Any] = {
        "serial": serial,
        "authority": "etcd-ca",
        "profile": "etcd-healthcheck-client",
        "subject": "CN=kube-etcd-healthcheck-client",
        "sans": (),
        "public_key_sha256": "ab" * 32,
        "fingerprint_sha256": "cd" * 32,
        "not_before": T0,
        "not_after": T0 + timedelta(seconds=900),
        "caller": "test-caller",
        "request_fingerprint": "request-1",
        "certificate_pem": "-----BEGIN CERTIFICATE-----\n",
    }
    fields.update(changes)
    return CertificateRow(**fields)


def issued_record(serial: str) -> dict[str, Any]:
    return {"event": "certificate.issued", "serial": serial, "fingerprint_sha256": f"fp-{serial}"}


def entry(serial: str, seq: int, revoked: bool = False) -> InventoryEntry:
    return InventoryEntry(serial, seq, f"fp-{serial}", revoked)


def records(store: SQLiteStore) -> list[dict[str, Any]]:
    return [json.loads(row.record) for row in store.chain()]


def issue(authority: Authority, profile: str = "admin", **options: Any) -> IssuedCertificate:
    csr = options.pop("csr", None) or make_csr()
    return authority.issue(CALLER, IssueRequest(profile, csr, **options))


# --- the chain -----------------------------------------------------------------------------


def test_canonical_json_is_sorted_compact_and_ascii() -> None:
    assert canonical({"b": 1, "a": "é", "c": [1, 2]}) == '{"a":"\\u00e9","b":1,"c":[1,2]}'


def test_each_stored_record_carries_its_sequence_number_and_the_previous_hash(
    store: SQLiteStore,
) -> None:
    for n in range(4):
        store.append_audit({"event": "e", "n": n})
    rows = list(store.chain())
    assert [row.seq for row in rows] == [1, 2, 3, 4]
    assert rows[0].prev_hash == GENESIS
    for before, row in itertools.pairwise(rows):
        assert row.prev_hash == before.hash
    for row in rows:
        assert json.loads(row.record)["seq"] == row.seq
        assert row.hash == link_hash(row.prev_hash, row.record)
    assert first_broken_link(rows) is None
    assert store.head() == rows[-1]


def test_an_edited_record_breaks_the_chain_at_that_record() -> None:
    rows = rows_of(5)
    rows[2] = dataclasses.replace(rows[2], record=rows[2].record.replace('"n":3', '"n":33'))
    broken = first_broken_link(rows)
    assert broken is not None
    assert broken[0] == 3
    assert "altered" in broken[1]


def test_a_deleted_record_is_reported_missing() -> None:
    rows = rows_of(5)
    del rows[2]
    assert first_broken_link(rows) == (3, "record 3 is missing (next present: 4)")


def test_swapped_record_texts_are_reported_at_the_first_moved_record() -> None:
    rows = rows_of(5)
    rows[1], rows[3] = (
        dataclasses.replace(rows[1], record=rows[3].record),
        dataclasses.replace(rows[3], record=rows[1].record),
    )
    assert first_broken_link(rows) == (2, "record 2 holds sequence number 4 (moved?)")


def test_an_inserted_record_breaks_the_chain_at_the_record_it_displaced() -> None:
    rows = rows_of(5)
    # The intruder links its record properly to record 2 and renumbers the rest.
    body = canonical({"event": "forged", "seq": 3})
    forged = ChainRow(3, body, rows[1].hash, link_hash(rows[1].hash, body))
    shifted = [dataclasses.replace(row, seq=row.seq + 1) for row in rows[2:]]
    broken = first_broken_link([*rows[:2], forged, *shifted])
    assert broken == (4, "record 4 holds sequence number 3 (moved?)")


def test_a_relinked_record_that_does_not_follow_its_predecessor_is_reported() -> None:
    rows = rows_of(4)
    rows[2] = dataclasses.replace(rows[2], prev_hash="f" * 64)
    assert first_broken_link(rows) == (3, "record 3 does not follow record 2")


def test_rewritten_history_and_a_cut_tail_pass_the_walk_alone() -> None:
    """What only a signed checkpoint can catch (see the verify tests below)."""
    rows = rows_of(5)
    rows[1] = dataclasses.replace(rows[1], record=rows[1].record.replace('"n":2', '"n":22'))
    assert first_broken_link(rechained(rows)) is None
    assert first_broken_link(rows_of(5)[:3]) is None


# --- signed checkpoints --------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [ec.generate_private_key(ec.SECP256R1()), rsa_key()],
    ids=["ecdsa", "rsa"],
)
def test_a_checkpoint_verifies_with_its_signers_key_only(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
) -> None:
    signed = sign_checkpoint(7, "a" * 64, key, T0)
    assert checkpoint_is_genuine(signed, key.public_key())
    other = ec.generate_private_key(ec.SECP256R1())
    assert not checkpoint_is_genuine(signed, other.public_key())


@pytest.mark.parametrize(
    "change",
    [{"seq": 8}, {"head_hash": "b" * 64}, {"signed_at": T0 + timedelta(seconds=1)}],
    ids=["seq", "head", "time"],
)
def test_a_checkpoint_with_any_field_changed_is_not_genuine(change: dict[str, Any]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    forged = dataclasses.replace(sign_checkpoint(7, "a" * 64, key, T0), **change)
    assert not checkpoint_is_genuine(forged, key.public_key())


def test_verify_passes_an_intact_chain_with_checkpoint_and_inventory() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    rows = rows_of(3)
    body = canonical({**issued_record("0a"), "seq": 4})
    rows.append(ChainRow(4, body, rows[-1].hash, link_hash(rows[-1].hash, body)))
    signed = sign_checkpoint(4, rows[-1].hash, key, T0)
    result = verify(rows, [signed], [entry("0a", 4)], key.public_key())
    assert result.problems == []
    assert (result.records, result.checkpoints, result.certificates) == (4, 1, 1)


def test_verify_catches_rewritten_history_only_through_the_checkpoint() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    rows = rows_of(6)
    signed = sign_checkpoint(5, rows[4].hash, key, T0)
    rows[1] = dataclasses.replace(rows[1], record=rows[1].record.replace('"n":2', '"n":22'))
    result = verify(rechained(rows), [signed], [], key.public_key())
    assert result.problems == [
        "checkpoint at record 5 does not match the chain (history before it was rewritten)"
    ]


def test_verify_catches_records_cut_after_a_checkpoint() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    rows = rows_of(6)
    signed = sign_checkpoint(5, rows[4].hash, key, T0)
    result = verify(rows[:3], [signed], [], key.public_key())
    assert result.problems == [
        "checkpoint at record 5 names a record that is gone (records were deleted)"
    ]


def test_verify_reports_a_checkpoint_signed_by_another_key() -> None:
    key, forger = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    rows = rows_of(3)
    forged = sign_checkpoint(3, rows[2].hash, forger, T0)
    result = verify(rows, [forged], [], key.public_key())
    assert result.problems == ["checkpoint at record 3 has no valid signature"]


def test_verify_reports_inventory_rows_without_their_issued_record() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    rows = rows_of(2)
    body = canonical({**issued_record("0a"), "seq": 3})
    rows.append(ChainRow(3, body, rows[-1].hash, link_hash(rows[-1].hash, body)))
    issued = [entry("0a", 3), entry("0b", 3), entry("0c", 1), entry("0d", 99)]
    problems = verify(rows, [], issued, key.public_key()).problems
    assert problems == [
        "certificate 0b has no matching audit record (record 3)",
        "certificate 0c has no matching audit record (record 1)",
        "certificate 0d has no matching audit record (record 99)",
    ]


def test_verify_reports_an_inventory_certificate_other_than_the_one_issued() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    rows = rows_of(2)
    body = canonical({**issued_record("0a"), "seq": 3})
    rows.append(ChainRow(3, body, rows[-1].hash, link_hash(rows[-1].hash, body)))
    swapped = InventoryEntry("0a", 3, "fp-other", False)
    assert verify(rows, [], [swapped], key.public_key()).problems == [
        "certificate 0a in the inventory is not the one record 3 issued (fingerprints differ)"
    ]


def test_verify_holds_revocation_state_against_the_chain_both_ways() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    rows = rows_of(2)
    for serial, event in (("0a", "issued"), ("0b", "issued"), ("0a", "revoked")):
        record = {**issued_record(serial), "event": f"certificate.{event}"}
        body = canonical({**record, "seq": len(rows) + 1})
        rows.append(ChainRow(len(rows) + 1, body, rows[-1].hash, link_hash(rows[-1].hash, body)))
    # 0a was revoked in the chain but not in the inventory; 0b the other way round.
    problems = verify(rows, [], [entry("0a", 3), entry("0b", 4, True)], key.public_key()).problems
    assert problems == [
        "certificate 0a is not revoked in the inventory, but the chain says otherwise",
        "certificate 0b is revoked in the inventory, but the chain says otherwise",
    ]


# --- the store: inventory rows, revocations, CRL numbers, checkpoints -------------------


def test_an_inventory_row_is_committed_with_its_record(store: SQLiteStore) -> None:
    row = store.append_audit(issued_record("0a"), certificate=inventory_row("0a"))
    found = store.find_certificate("0a")
    assert found is not None
    assert found.audit_seq == row.seq
    # Committed, not just written: another connection sees both.
    with sqlite3.connect(store.path) as other:
        assert other.execute("SELECT seq FROM audit_chain").fetchall() == [(row.seq,)]
        assert other.execute("SELECT audit_seq FROM certificates").fetchall() == [(row.seq,)]
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_record_whose_inventory_row_fails_is_rolled_back(store: SQLiteStore) -> None:
    store.append_audit(issued_record("0a"), certificate=inventory_row("0a"))
    with pytest.raises(sqlite3.IntegrityError):
        store.append_audit(issued_record("0a"), certificate=inventory_row("0a"))
    assert [row.seq for row in store.chain()] == [1]
    assert store.append_audit({"event": "next"}).seq == 2


def test_a_revocation_is_committed_with_its_record(store: SQLiteStore) -> None:
    store.append_audit(issued_record("0a"), certificate=inventory_row("0a"))
    row = store.append_audit({"event": "certificate.revoked"}, revoke=("0a", T0, "key_compromise"))
    revoked = store.find_certificate("0a")
    assert revoked is not None
    assert (revoked.revoked_at, revoked.revocation_reason) == (T0, "key_compromise")
    assert [r.serial for r in store.next_crl("etcd-ca")[1]] == ["0a"]
    assert row.seq == 2


def test_revoking_an_unknown_or_revoked_serial_writes_no_record(store: SQLiteStore) -> None:
    store.append_audit(issued_record("0a"), certificate=inventory_row("0a"))
    store.append_audit({"event": "revoked"}, revoke=("0a", T0, "superseded"))
    for serial in ("0a", "ff"):
        with pytest.raises(NotFound):
            store.append_audit({"event": "revoked"}, revoke=(serial, T0, "superseded"))
    assert [row.seq for row in store.chain()] == [1, 2]


def test_a_certificate_is_reusable_until_its_renewal_window(store: SQLiteStore) -> None:
    # 900 s of validity: the renewal window is its last third, from 600 s on.
    store.append_audit(issued_record("0a"), certificate=inventory_row("0a"))
    for seconds, reusable in ((0, True), (599, True), (600, False), (899, False), (901, False)):
        found = store.claim_or_reuse("request-1", T0 + timedelta(seconds=seconds))
        assert isinstance(found, CertificateRow) is reusable, seconds
        store.release_claim("request-1")


def test_reuse_needs_the_same_request_and_an_unrevoked_certificate(store: SQLiteStore) -> None:
    store.append_audit(issued_record("0a"), certificate=inventory_row("0a"))
    assert store.claim_or_reuse("request-2", T0) is True  # nothing to reuse: claimed
    store.append_audit({"event": "revoked"}, revoke=("0a", T0, "superseded"))
    assert store.claim_or_reuse("request-1", T0) is True


def test_the_newest_current_certificate_is_the_one_reused(store: SQLiteStore) -> None:
    later = T0 + timedelta(seconds=60)
    store.append_audit(issued_record("0a"), certificate=inventory_row("0a"))
    store.append_audit(
        issued_record("0b"),
        certificate=inventory_row("0b", not_before=later, not_after=later + timedelta(hours=1)),
    )
    found = store.claim_or_reuse("request-1", later)
    assert isinstance(found, CertificateRow)
    assert found.serial == "0b"


def test_an_identical_request_waits_while_another_holds_the_claim(store: SQLiteStore) -> None:
    assert store.claim_or_reuse("request-9", T0) is True
    assert store.claim_or_reuse("request-9", T0) is False  # someone is signing it
    # A claim from a worker that died is taken over once it is stale.
    assert store.claim_or_reuse("request-9", T0 + timedelta(seconds=31)) is True


def test_list_certificates_filters_by_authority_profile_expiry_and_revocation(
    store: SQLiteStore,
) -> None:
    rows = [
        inventory_row("01"),
        inventory_row("02", not_after=T0 + timedelta(days=30)),
        inventory_row("03", authority="kubernetes-ca", profile="admin"),
        inventory_row("04", authority="kubernetes-ca", profile="kube-proxy"),
    ]
    for row in rows:
        store.append_audit(issued_record(row.serial), certificate=row)
    store.append_audit({"event": "revoked"}, revoke=("04", T0, "superseded"))

    def serials(**filters: Any) -> list[str]:
        return sorted(row.serial for row in store.list_certificates(**filters))

    assert serials() == ["01", "02", "03", "04"]
    assert serials(authority="etcd-ca") == ["01", "02"]
    assert serials(authority="kubernetes-ca", profile="admin") == ["03"]
    assert serials(expiring_before=T0 + timedelta(hours=1)) == ["01", "03", "04"]
    assert serials(revoked_only=True) == ["04"]


def test_crl_numbers_increase_per_authority(store: SQLiteStore) -> None:
    assert [store.next_crl("etcd-ca")[0] for _ in range(3)] == [1, 2, 3]
    assert store.next_crl("kubernetes-ca")[0] == 1
    assert store.crl_number("etcd-ca") == 3


def test_a_crl_number_and_its_revocations_are_read_together(store: SQLiteStore) -> None:
    store.append_audit(issued_record("0a"), certificate=inventory_row("0a"))
    store.append_audit({"event": "revoked"}, revoke=("0a", T0, "superseded"))
    number, revoked = store.next_crl("etcd-ca")
    assert (number, [r.serial for r in revoked]) == (1, ["0a"])


def test_checkpoints_survive_a_reopen(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signed = sign_checkpoint(3, "a" * 64, key, T0)
    path = tmp_path / "kubeca.db"
    first = SQLiteStore(path)
    first.add_checkpoint(signed)
    first.close()
    second = SQLiteStore(path)
    try:
        assert second.checkpoints() == [signed]
    finally:
        second.close()


# --- the audit log over the chain ----------------------------------------------------------


def test_each_json_line_mirrors_its_chain_row(ledger_audit: AuditLog, store: SQLiteStore) -> None:
    seqs = [ledger_audit.record("thing.happened", n=n) for n in range(3)]
    lines = read_audit(ledger_audit.path)
    rows = list(store.chain())
    assert seqs == [1, 2, 3]
    assert [(r["seq"], r["prev_hash"], r["hash"]) for r in lines] == [
        (row.seq, row.prev_hash, row.hash) for row in rows
    ]
    for line, row in zip(lines, rows, strict=True):
        stored = json.loads(row.record)
        assert (stored["event"], stored["n"], stored["time"]) == (
            line["event"],
            line["n"],
            line["time"],
        )


def test_no_certificate_when_the_chain_cannot_be_written(
    ca_set: CASet, linter: Linter, tmp_path: Path
) -> None:
    class BrokenStore(SQLiteStore):
        def append_audit(self, *args: Any, **kwargs: Any) -> ChainRow:
            raise Unavailable("the state database is unavailable (disk I/O error)")

    broken = BrokenStore(tmp_path / "kubeca.db")
    log = AuditLog(tmp_path / "audit.log", broken)
    try:
        authority = Authority(
            ca_set.authorities, ca_set.config.leaf, log, linter, grants=GRANTS, store=broken
        )
        returned: list[IssuedCertificate] = []
        with pytest.raises(Unavailable, match="state database is unavailable"):
            returned.append(issue(authority))
        assert returned == []
        assert broken.list_certificates() == []
        assert log.path.read_text() == ""
    finally:
        log.close()
        broken.close()


# --- issuance with an inventory: the record, the row, and idempotency --------------------


def test_an_issued_certificate_has_its_inventory_row_and_record(
    make_ledger_authority: AuthorityMaker, store: SQLiteStore, service_ca: CertificateAuthority
) -> None:
    issued = issue(make_ledger_authority())
    row = store.find_certificate(issued.serial_hex)
    assert row is not None
    assert row.certificate_pem == issued.certificate_pem
    record = json.loads(next(r for r in store.chain() if r.seq == row.audit_seq).record)
    assert (record["event"], record["serial"]) == ("certificate.issued", issued.serial_hex)
    result = verify(
        list(store.chain()),
        store.checkpoints(),
        [
            InventoryEntry(r.serial, r.audit_seq, r.fingerprint_sha256, r.revoked_at is not None)
            for r in store.list_certificates()
        ],
        service_ca.certificate.public_key(),
    )
    assert result.problems == []


def test_twenty_identical_requests_yield_one_certificate(
    make_ledger_authority: AuthorityMaker, store: SQLiteStore
) -> None:
    authority, csr = make_ledger_authority(), make_csr()
    answers = [issue(authority, csr=csr) for _ in range(20)]
    assert len({a.serial_hex for a in answers}) == 1
    assert [a.reused for a in answers] == [False] + [True] * 19
    events = [r["event"] for r in records(store) if r.get("serial") == answers[0].serial_hex]
    assert events == ["certificate.issued"] + ["certificate.reused"] * 19
    assert len(store.list_certificates()) == 1


def test_a_request_inside_the_renewal_window_gets_a_new_certificate(
    make_ledger_authority: AuthorityMaker,
) -> None:
    now = [datetime.now(UTC)]
    authority, csr = make_ledger_authority(clock=lambda: now[0]), make_csr()
    lifetime = timedelta(minutes=15)
    first = issue(authority, csr=csr, lifetime=lifetime)
    cert = first.certificate
    validity = cert.not_valid_after_utc - cert.not_valid_before_utc
    window_opens = cert.not_valid_after_utc - validity / 3
    now[0] = window_opens - timedelta(seconds=1)
    before = issue(authority, csr=csr, lifetime=lifetime)
    now[0] = window_opens + timedelta(seconds=1)
    inside = issue(authority, csr=csr, lifetime=lifetime)
    assert (before.reused, before.serial_hex) == (True, first.serial_hex)
    assert not inside.reused
    assert inside.serial_hex != first.serial_hex


def test_force_new_always_signs_a_new_certificate(make_ledger_authority: AuthorityMaker) -> None:
    authority, csr = make_ledger_authority(), make_csr()
    first = issue(authority, csr=csr)
    forced = issue(authority, csr=csr, force_new=True)
    assert not forced.reused
    assert forced.serial_hex != first.serial_hex


def test_another_key_lifetime_or_parameter_gets_a_new_certificate(
    make_ledger_authority: AuthorityMaker,
) -> None:
    authority, csr = make_ledger_authority(), make_csr()
    node = {"node_name": "cp-1", "advertise_address": "192.0.2.10"}
    first = issue(authority, "etcd-server", csr=csr, parameters=node)
    variants = [
        issue(authority, "etcd-server", csr=make_csr(rsa_key()), parameters=node),
        issue(authority, "etcd-server", csr=csr, parameters=node, lifetime=timedelta(days=2)),
        issue(authority, "etcd-server", csr=csr, parameters={**node, "node_name": "cp-2"}),
        issue(authority, "etcd-peer", csr=csr, parameters=node),
    ]
    assert not any(v.reused for v in variants)
    assert len({first.serial_hex, *(v.serial_hex for v in variants)}) == 5
    again = issue(authority, "etcd-server", csr=csr, parameters=node)
    assert (again.reused, again.serial_hex) == (True, first.serial_hex)


def test_a_revoked_certificate_is_never_reused(make_ledger_authority: AuthorityMaker) -> None:
    authority, csr = make_ledger_authority(grants=REVOKER_GRANTS), make_csr()
    first = issue(authority, csr=csr)
    authority.revoke(CALLER, first.serial_hex, "key_compromise")
    again = issue(authority, csr=csr)
    assert not again.reused
    assert again.serial_hex != first.serial_hex


# --- revocation ------------------------------------------------------------------------------


def test_revoking_needs_revoke_in_the_grant(
    make_ledger_authority: AuthorityMaker, store: SQLiteStore
) -> None:
    authority = make_ledger_authority()
    issued = issue(authority)
    with pytest.raises(PermissionDenied, match="revoke = true"):
        authority.revoke(CALLER, issued.serial_hex, "superseded")
    row = store.find_certificate(issued.serial_hex)
    assert row is not None
    assert row.revoked_at is None
    assert records(store)[-1]["event"] == "certificate.revoke_refused"


def test_revocation_is_recorded_in_the_chain(
    make_ledger_authority: AuthorityMaker, store: SQLiteStore
) -> None:
    authority = make_ledger_authority(grants=REVOKER_GRANTS, clock=lambda: T0)
    issued = issue(authority)
    row = authority.revoke(CALLER, "0x" + issued.serial_hex.upper(), "key_compromise")
    assert (row.serial, row.revoked_at, row.revocation_reason) == (
        issued.serial_hex,
        T0,
        "key_compromise",
    )
    last = records(store)[-1]
    assert (last["event"], last["serial"], last["reason"]) == (
        "certificate.revoked",
        issued.serial_hex,
        "key_compromise",
    )


def test_revocation_accepts_the_serial_as_openssl_prints_it(
    make_ledger_authority: AuthorityMaker,
) -> None:
    """openssl prints whole octets ("0A1B..." and "0a:1b:..."); about one serial in
    eight has a leading zero nibble that the server's own hex spelling leaves out."""
    authority, csr = make_ledger_authority(grants=REVOKER_GRANTS), make_csr()
    issued = next(
        i
        for i in (issue(authority, csr=csr, force_new=True) for _ in range(200))
        if len(i.serial_hex) % 2
    )
    octets = bytes.fromhex("0" + issued.serial_hex)
    row = authority.revoke(CALLER, ":".join(f"{b:02x}" for b in octets), "superseded")
    assert row.serial == issued.serial_hex


def test_revoking_twice_or_an_unknown_serial_is_refused_and_recorded(
    make_ledger_authority: AuthorityMaker, store: SQLiteStore
) -> None:
    authority = make_ledger_authority(grants=REVOKER_GRANTS)
    issued = issue(authority)
    authority.revoke(CALLER, issued.serial_hex, "superseded")
    with pytest.raises(InvalidArgument, match="revoked already"):
        authority.revoke(CALLER, issued.serial_hex, "superseded")
    with pytest.raises(NotFound, match="no certificate with serial"):
        authority.revoke(CALLER, "abcdef", "superseded")
    events = [r["event"] for r in records(store)]
    assert events[-3:] == [
        "certificate.revoked",
        "certificate.revoke_refused",
        "certificate.revoke_refused",
    ]


# --- checkpoints signed by the service CA ----------------------------------------------------


def test_checkpoint_signs_the_head_with_the_service_ca_key(
    store: SQLiteStore, ledger_audit: AuditLog, service_ca: CertificateAuthority
) -> None:
    assert checkpoint(store, ledger_audit, service_ca) is None  # an empty chain
    for n in range(3):
        ledger_audit.record("e", n=n)
    signed = checkpoint(store, ledger_audit, service_ca)
    assert signed is not None
    assert (signed.seq, signed.head_hash) == (3, list(store.chain())[2].hash)
    assert checkpoint_is_genuine(signed, service_ca.certificate.public_key())
    assert store.checkpoints() == [signed]
    assert records(store)[-1]["event"] == "audit.checkpoint"


def test_checkpoint_waits_for_its_minimum_age(
    store: SQLiteStore, ledger_audit: AuditLog, service_ca: CertificateAuthority
) -> None:
    ledger_audit.record("e")
    assert checkpoint(store, ledger_audit, service_ca, 3600) is not None
    ledger_audit.record("e")
    assert checkpoint(store, ledger_audit, service_ca, 3600) is None
    assert len(store.checkpoints()) == 1


def test_a_checkpoint_with_a_forged_signature_fails_verification(
    store: SQLiteStore, ledger_audit: AuditLog, service_ca: CertificateAuthority
) -> None:
    ledger_audit.record("e")
    signed = checkpoint(store, ledger_audit, service_ca)
    assert signed is not None
    store.add_checkpoint(dataclasses.replace(signed, signature=b"\x30\x00"))
    result = verify(
        list(store.chain()), store.checkpoints(), [], service_ca.certificate.public_key()
    )
    assert result.problems == [f"checkpoint at record {signed.seq} has no valid signature"]


def test_checkpoint_round_trips_its_time_exactly(store: SQLiteStore) -> None:
    """signed_at is in the signed message, so the stored time must come back bit-exact."""
    key = ec.generate_private_key(ec.SECP256R1())
    moment = datetime(2031, 5, 6, 7, 8, 9, 123457, tzinfo=UTC)
    store.add_checkpoint(sign_checkpoint(1, "a" * 64, key, moment))
    (back,) = store.checkpoints()
    assert back.signed_at == moment
    assert checkpoint_is_genuine(back, key.public_key())
