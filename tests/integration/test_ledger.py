"""The ledger against a real server: the hash-chained audit in SQLite and its JSON mirror,
signed checkpoints and `kubeca-server audit verify` against each kind of tampering,
revocation and CRLs, the inventory, idempotent issuance, and what kill -9 leaves.

Tampering is done on copies of the state (SQLite's backup API: a consistent snapshot of
the live WAL database), edited with sqlite3 and verified with the real CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from kubeca_client.client import Client, IssuedCertificate
from kubeca_client.errors import InvalidArgument, NotFound, PermissionDenied
from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key
from kubeca_server.keys import sign_bytes
from kubeca_server.ledger.chain import GENESIS, ChainRow, Checkpoint, first_broken_link, link_hash
from kubeca_server.ledger.verify import checkpoint_is_genuine

from tests.support import (
    BIN,
    RunningServer,
    Token,
    make_token,
    run_server_cli,
    write_server_config,
)

pytestmark = pytest.mark.integration

TIMEOUT = 20.0
ALL_CAS = ("kubernetes-ca", "etcd-ca", "front-proxy-ca")
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)
NODE = {"node_name": "cp-1", "advertise_address": "192.0.2.10"}


# --- servers, files and commands ----------------------------------------------------------


def revoking_config(directory: Path, token: Token) -> Path:
    """A server config whose test operator may also revoke (its grant is the last table)."""
    config = write_server_config(directory, token)
    with config.open("a") as f:
        f.write("revoke = true\n")
    return config


@dataclass
class Ledger:
    server: RunningServer
    client: Client
    client_config: Path

    @property
    def database(self) -> Path:
        return self.server.state_dir / "kubeca.db"


@pytest.fixture(scope="module")
def ledger_token(tmp_path_factory: pytest.TempPathFactory) -> Token:
    return make_token(tmp_path_factory.mktemp("ledger-softhsm"), label="kubeca-ledger")


@pytest.fixture(scope="module")
def ledger(ledger_token: Token, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    base = tmp_path_factory.mktemp("ledger-server")
    config = revoking_config(base, ledger_token)
    run_server_cli(config, ledger_token, "init")
    server = RunningServer(config, ledger_token).start()
    try:
        with server.client(TIMEOUT) as client:
            yield Ledger(server, client, server.client_config(base / "client.toml"))
    finally:
        server.stop()


def new_csr() -> bytes:
    return build_csr(generate_private_key(KeyAlgorithm.ECDSA_P256))


def kubeca(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubeca"), "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@contextmanager
def opened(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to a state database, committed and closed on the way out."""
    db = sqlite3.connect(path)
    try:
        with db:
            yield db
    finally:
        db.close()


def chain_rows(database: Path) -> list[ChainRow]:
    with opened(database) as db:
        rows = db.execute("SELECT seq, record, prev_hash, hash FROM audit_chain ORDER BY seq")
        return [ChainRow(*row) for row in rows]


def chain_records(database: Path) -> list[dict[str, Any]]:
    return [json.loads(row.record) for row in chain_rows(database)]


def audit_lines(server: RunningServer) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.audit_log.read_text().splitlines() if line]


def issued_serials(database: Path) -> list[str]:
    return [r["serial"] for r in chain_records(database) if r["event"] == "certificate.issued"]


def load_ca(server: RunningServer, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((server.state_dir / "ca" / f"{name}.crt").read_bytes())


def lint_crl(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "lint_crl"), "lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


# --- every decision is a chained record, mirrored in the JSON log -------------------------


def test_every_kind_of_decision_is_chained_and_mirrored_in_the_json_log(ledger: Ledger) -> None:
    client, server = ledger.client, ledger.server
    issued = client.issue_certificate("etcd-healthcheck-client", new_csr())
    with pytest.raises(NotFound):
        client.issue_certificate("no-such-profile", new_csr())
    client.revoke_certificate(issued.serial, "superseded")
    created = client.create_bootstrap_token(["kubelet-client"], "node-7", [], 600)
    node_credentials = server.credentials(operator=False)
    with Client(
        server.bootstrap_address, TIMEOUT, credentials=node_credentials, token=created.token
    ) as node:
        by_token = node.issue_certificate("kubelet-client", new_csr(), {"node_name": "node-7"})

    rows = chain_rows(ledger.database)
    lines = audit_lines(server)
    assert first_broken_link(rows) is None
    assert [(r["seq"], r["prev_hash"], r["hash"]) for r in lines] == [
        (row.seq, row.prev_hash, row.hash) for row in rows
    ]
    for line, row in zip(lines, rows, strict=True):
        assert json.loads(row.record)["event"] == line["event"]
    events = {(r["event"], r.get("serial")) for r in lines}
    assert ("certificate.issued", issued.serial) in events
    assert ("certificate.revoked", issued.serial) in events
    assert ("certificate.refused", None) in events
    assert ("token.created", None) in events
    assert ("crl.generated", None) in events
    used = [r for r in lines if r.get("serial") == by_token.serial]
    assert [(r["event"], r["token_id"]) for r in used] == [("certificate.issued", created.token_id)]


# --- revocation and CRLs ------------------------------------------------------------------


def test_revoke_publishes_a_crl_listing_the_serial_signed_by_its_ca(
    ledger: Ledger, tmp_path: Path
) -> None:
    client, server = ledger.client, ledger.server
    published = server.state_dir / "crl" / "etcd-ca.crl"
    numbers = [crl_number(x509.load_der_x509_crl(published.read_bytes()))]
    serials = []
    # kubeca's snake case, and RFC 5280's camel case as openssl users type it.
    for spelling in ("key_compromise", "keyCompromise"):
        serial = client.issue_certificate("etcd-healthcheck-client", new_csr()).serial
        done = kubeca(ledger.client_config, "revoke", "--serial", serial, "--reason", spelling)
        assert done.returncode == 0, done.stderr
        assert f"revoked {serial} (etcd-ca)" in done.stdout
        numbers.append(crl_number(x509.load_der_x509_crl(published.read_bytes())))
        assert f"CRL number {numbers[-1]} published" in done.stdout
        serials.append(serial)
    assert numbers == sorted(set(numbers)), "the file is rewritten with a higher number each time"

    out = tmp_path / "etcd-ca.crl"
    fetched = kubeca(ledger.client_config, "crl", "--authority", "etcd-ca", "--out", str(out))
    assert fetched.returncode == 0, fetched.stderr
    text = subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", str(out), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Key Compromise" in text
    crl = x509.load_der_x509_crl(out.read_bytes())
    ca = load_ca(server, "etcd-ca")
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert crl.issuer == ca.subject
    assert crl_number(crl) >= numbers[-1]
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    for serial in serials:
        entry = crl.get_revoked_certificate_by_serial_number(int(serial, 16))
        assert entry is not None, serial
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert reason is x509.ReasonFlags.key_compromise
    linted = lint_crl(out)
    assert (linted.returncode, linted.stdout.strip()) == (0, ""), linted.stdout


def test_every_crl_lints_clean(ledger: Ledger, tmp_path: Path) -> None:
    client = ledger.client
    for reason in ("superseded", "unspecified"):  # with and without a reason code
        serial = client.issue_certificate("kube-proxy", new_csr()).serial
        client.revoke_certificate(serial, reason)
    files = sorted((ledger.server.state_dir / "crl").glob("*.crl"))
    # The service CA's too: it lists revoked operator credentials.
    every_ca = (*ALL_CAS, "kubeca-service-ca")
    assert [f.stem for f in files] == sorted(every_ca)
    for name in every_ca:  # front-proxy-ca's is empty
        fetched = tmp_path / f"{name}.crl"
        fetched.write_bytes(client.crl(name).der)
        files.append(fetched)
    for path in files:
        linted = lint_crl(path)
        assert (linted.returncode, linted.stdout.strip(), linted.stderr) == (0, "", ""), path


def test_revoking_needs_revoke_in_the_grant(client: Client) -> None:
    serial = client.issue_certificate("kube-proxy", new_csr()).serial
    with pytest.raises(PermissionDenied, match="revoke = true"):
        client.revoke_certificate(serial, "key_compromise")
    assert not next(c for c in client.certificates() if c.serial == serial).revoked


def test_revoking_an_unknown_serial_is_not_found(ledger: Ledger) -> None:
    with pytest.raises(NotFound, match="no certificate with serial"):
        ledger.client.revoke_certificate("deadbeef0123", "key_compromise")


def test_revoking_twice_is_an_invalid_argument(ledger: Ledger) -> None:
    serial = ledger.client.issue_certificate("kube-proxy", new_csr()).serial
    ledger.client.revoke_certificate(serial, "superseded")
    with pytest.raises(InvalidArgument, match="revoked already"):
        ledger.client.revoke_certificate(serial, "superseded")


# --- the inventory ---------------------------------------------------------------------------


def test_certs_list_filters_by_authority_profile_expiry_and_revocation(ledger: Ledger) -> None:
    client = ledger.client
    short_etcd = client.issue_certificate("etcd-healthcheck-client", new_csr(), None, 900).serial
    short_proxy = client.issue_certificate("front-proxy-client", new_csr(), None, 900).serial
    long_etcd = client.issue_certificate("etcd-healthcheck-client", new_csr()).serial
    revoked = client.issue_certificate("controller-manager", new_csr()).serial
    client.revoke_certificate(revoked, "superseded")
    mine = {short_etcd, short_proxy, long_etcd, revoked}

    def listed(*filters: str) -> list[dict[str, Any]]:
        done = kubeca(ledger.client_config, "certs", "list", *filters, "-o", "json")
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        return rows

    def ours(rows: list[dict[str, Any]]) -> set[str]:
        return {r["serial"] for r in rows} & mine

    everything = listed()
    assert ours(everything) == mine
    assert len({r["serial"] for r in everything}) == len(everything)
    by_profile = listed("--profile", "etcd-healthcheck-client")
    assert {r["profile"] for r in by_profile} == {"etcd-healthcheck-client"}
    assert ours(by_profile) == {short_etcd, long_etcd}
    by_authority = listed("--authority", "front-proxy-ca")
    assert {r["authority"] for r in by_authority} == {"front-proxy-ca"}
    assert ours(by_authority) == {short_proxy}
    horizon = datetime.now(UTC) + timedelta(hours=1, minutes=1)
    expiring = listed("--expiring-within", "1h")
    assert all(datetime.fromisoformat(r["not_after"]) <= horizon for r in expiring)
    assert ours(expiring) == {short_etcd, short_proxy}
    assert ours(listed("--authority", "etcd-ca", "--expiring-within", "1h")) == {short_etcd}
    only_revoked = listed("--revoked")
    assert all(r["revoked"] and r["revoked_at"] for r in only_revoked)
    assert ours(only_revoked) == {revoked}
    assert next(r for r in only_revoked if r["serial"] == revoked)["revocation_reason"] == (
        "superseded"
    )
    table = kubeca(ledger.client_config, "certs", "list", "--profile", "controller-manager")
    assert re.search(rf"^{revoked}\s.*revoked \(superseded\)$", table.stdout, re.M), table.stdout


# --- idempotent issuance ---------------------------------------------------------------------


def test_twenty_identical_requests_yield_one_certificate(ledger: Ledger) -> None:
    client, csr = ledger.client, new_csr()
    answers = [client.issue_certificate("etcd-server", csr, NODE) for _ in range(20)]
    serial = answers[0].serial
    assert {a.serial for a in answers} == {serial}
    assert {a.certificate_pem for a in answers} == {answers[0].certificate_pem}
    assert [a.reused for a in answers] == [False] + [True] * 19
    for records in (audit_lines(ledger.server), chain_records(ledger.database)):
        events = [r["event"] for r in records if r.get("serial") == serial]
        assert events == ["certificate.issued"] + ["certificate.reused"] * 19
    assert [c.serial for c in client.certificates()].count(serial) == 1


def test_twenty_concurrent_identical_requests_yield_one_certificate(ledger: Ledger) -> None:
    """Retries that overlap (a client timing out and asking again, parallel plans) are
    the same question too."""
    csr = new_csr()
    clients = [ledger.server.client(TIMEOUT, OWN_CONNECTION) for _ in range(20)]
    start = threading.Barrier(len(clients))

    def ask(client: Client) -> IssuedCertificate:
        client.ca_certificates()  # connected before the requests race
        start.wait(TIMEOUT)
        return client.issue_certificate("etcd-server", csr, NODE)

    try:
        with ThreadPoolExecutor(max_workers=len(clients)) as pool:
            answers = list(pool.map(ask, clients))
    finally:
        for c in clients:
            c.close()
    assert len({a.serial for a in answers}) == 1, sorted({a.serial for a in answers})
    assert sum(not a.reused for a in answers) == 1


def test_a_short_lived_certificate_is_reused_until_a_new_one_is_asked_for(
    ledger: Ledger, tmp_path: Path
) -> None:
    """15 minutes of lifetime: the renewal window (the last third, NotBefore being
    backdated 5 minutes) is minutes away, so the same request is answered from the
    inventory; --new (force_new) signs a new one regardless. The window itself is
    covered in tests/unit/test_ledger.py, with a clock."""
    client, csr = ledger.client, new_csr()
    first = client.issue_certificate("kube-proxy", csr, None, 900)
    again = client.issue_certificate("kube-proxy", csr, None, 900)
    forced = client.issue_certificate("kube-proxy", csr, None, 900, force_new=True)
    assert (again.reused, again.serial) == (True, first.serial)
    assert not forced.reused
    assert forced.serial != first.serial

    csr_file = tmp_path / "kube-proxy.csr"
    csr_file.write_bytes(csr)
    base = ["issue", "--profile", "kube-proxy", "--csr", str(csr_file), "--lifetime", "15m"]
    reused = kubeca(ledger.client_config, *base, "--cert-out", str(tmp_path / "a.crt"))
    renewed = kubeca(ledger.client_config, *base, "--new", "--cert-out", str(tmp_path / "b.crt"))
    assert reused.returncode == renewed.returncode == 0, reused.stderr + renewed.stderr
    assert re.search(rf"^reused .*serial ({first.serial}|{forced.serial}),", reused.stdout)
    match = re.search(r"^issued .*serial ([0-9a-f]+),", renewed.stdout)
    assert match, renewed.stdout
    assert match[1] not in {first.serial, forced.serial}


def test_another_key_or_other_parameters_get_a_new_certificate(ledger: Ledger) -> None:
    client, csr = ledger.client, new_csr()
    first = client.issue_certificate("etcd-peer", csr, NODE)
    variants = [
        client.issue_certificate("etcd-peer", new_csr(), NODE),
        client.issue_certificate("etcd-peer", csr, {**NODE, "node_name": "cp-2"}),
        client.issue_certificate("etcd-peer", csr, NODE, 2 * 86400),
        client.issue_certificate("etcd-server", csr, NODE),
    ]
    assert not any(v.reused for v in variants)
    assert len({first.serial, *(v.serial for v in variants)}) == 5
    assert client.issue_certificate("etcd-peer", csr, NODE).serial == first.serial


def test_a_revoked_certificate_is_never_reused(ledger: Ledger) -> None:
    client, csr = ledger.client, new_csr()
    first = client.issue_certificate("scheduler", csr)
    client.revoke_certificate(first.serial, "key_compromise")
    again = client.issue_certificate("scheduler", csr)
    assert not again.reused
    assert again.serial != first.serial


# --- checkpoints and `audit verify` against tampering ----------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of a live server's state: some certificates, a signed
    checkpoint, more certificates after it, and one revocation."""

    state: Path
    token: Token
    checkpoint_seq: int
    serials: tuple[str, ...]  # in issue order; the last two after the checkpoint
    revoked: str

    def copy(self, directory: Path) -> Path:
        """A server config over a fresh copy of the state; returns its path."""
        config = write_server_config(directory, self.token)
        shutil.copytree(self.state, directory / "state")
        return config

    def issued_seq(self, config: Path, serial: str) -> int:
        for row in chain_rows(config.parent / "state" / "kubeca.db"):
            record = json.loads(row.record)
            if (record["event"], record.get("serial")) == ("certificate.issued", serial):
                return row.seq
        raise AssertionError(f"no issued record for {serial}")


@pytest.fixture(scope="module")
def snapshot(ledger: Ledger, tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    client, server = ledger.client, ledger.server
    serials = [client.issue_certificate("kube-proxy", new_csr()).serial for _ in range(3)]
    signed = run_server_cli(server.config, server.token, "audit", "checkpoint")
    match = re.fullmatch(r"checkpoint at record (\d+): ([0-9a-f]{64})\n", signed.stdout)
    assert match, signed.stdout
    serials += [client.issue_certificate("kube-proxy", new_csr()).serial for _ in range(2)]
    revoked = client.issue_certificate("kube-proxy", new_csr()).serial
    client.revoke_certificate(revoked, "key_compromise")
    state = tmp_path_factory.mktemp("ledger-snapshot") / "state"
    state.mkdir()
    shutil.copytree(server.state_dir / "ca", state / "ca")
    with opened(ledger.database) as live, opened(state / "kubeca.db") as copy:
        live.backup(copy)
    shutil.copy(server.audit_log, state / "audit.log")  # nothing writes in between
    return Snapshot(state, server.token, int(match[1]), tuple(serials), revoked)


def edit(config: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    with opened(config.parent / "state" / "kubeca.db") as db:
        for sql, args in statements:
            db.execute(sql, args)


def verify_copy(config: Path, token: Token, pin: str | None = None) -> tuple[int, str]:
    extra = ("--service-ca-hash", pin) if pin else ()
    done = run_server_cli(config, token, "audit", "verify", *extra, check=False)
    return done.returncode, done.stdout + done.stderr


def service_ca_pin(state: Path) -> str:
    ca = x509.load_pem_x509_certificate((state / "ca" / "kubeca-service-ca.crt").read_bytes())
    spki = ca.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def test_audit_checkpoint_signs_the_head_with_the_service_ca_key(
    ledger: Ledger, snapshot: Snapshot
) -> None:
    with opened(snapshot.state / "kubeca.db") as db:
        row = db.execute(
            "SELECT seq, head_hash, signed_at, signature FROM checkpoints WHERE seq = ?",
            (snapshot.checkpoint_seq,),
        ).fetchone()
    checkpoint = Checkpoint(row[0], row[1], datetime.fromtimestamp(row[2], UTC), row[3])
    head = next(r for r in chain_rows(snapshot.state / "kubeca.db") if r.seq == row[0])
    assert checkpoint.head_hash == head.hash
    service_ca = load_ca(ledger.server, "kubeca-service-ca")
    assert checkpoint_is_genuine(checkpoint, service_ca.public_key())
    after = json.loads(
        next(r for r in chain_rows(snapshot.state / "kubeca.db") if r.seq == row[0] + 1).record
    )
    assert (after["event"], after["checkpoint_seq"]) == ("audit.checkpoint", row[0])


def test_an_untampered_copy_verifies(snapshot: Snapshot, tmp_path: Path) -> None:
    config = snapshot.copy(tmp_path)
    code, output = verify_copy(config, snapshot.token, service_ca_pin(snapshot.state))
    assert code == 0, output
    assert output.endswith("the audit chain verifies\n")


def test_without_a_pin_verify_says_its_anchor_came_from_the_state_it_checks(
    snapshot: Snapshot, tmp_path: Path
) -> None:
    code, output = verify_copy(snapshot.copy(tmp_path), snapshot.token)
    assert code == 0, output
    assert "pass --service-ca-hash" in output


def test_a_replaced_service_ca_is_caught_by_the_pin(snapshot: Snapshot, tmp_path: Path) -> None:
    """Rewriting history, re-signing the checkpoints with a CA of one's own and putting
    that CA in the store fools everything but an anchor kept elsewhere."""
    config = snapshot.copy(tmp_path)
    pin = service_ca_pin(snapshot.state)
    other = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "kubeca-service-ca")])
    now = datetime.now(UTC)
    forged = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(other.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(other, hashes.SHA256())
    )
    # The service CA's certificate lives in the store, beside the chain it anchors.
    edit(
        config,
        (
            "UPDATE ca_generations SET certificate_pem = ? WHERE authority = 'kubeca-service-ca'",
            (forged.public_bytes(Encoding.PEM).decode(),),
        ),
    )
    code, output = verify_copy(config, snapshot.token, pin)
    assert code == 1
    assert "is not the one pinned" in output


def test_verify_refuses_a_missing_database_rather_than_making_one(
    snapshot: Snapshot, tmp_path: Path
) -> None:
    config = snapshot.copy(tmp_path)
    for name in ("kubeca.db", "kubeca.db-wal", "kubeca.db-shm"):
        (tmp_path / "state" / name).unlink(missing_ok=True)
    code, output = verify_copy(config, snapshot.token, service_ca_pin(snapshot.state))
    assert code == 78
    assert "there is no state database" in output
    assert not (tmp_path / "state" / "kubeca.db").exists()
    assert "FAIL" not in output


def test_verify_reports_an_edited_record(snapshot: Snapshot, tmp_path: Path) -> None:
    config = snapshot.copy(tmp_path)
    seq = snapshot.issued_seq(config, snapshot.serials[1])
    edit(
        config,
        (
            "UPDATE audit_chain SET record = replace(record, 'kubeca-test-admin', 'mallory') "
            "WHERE seq = ?",
            (seq,),
        ),
    )
    code, output = verify_copy(config, snapshot.token)
    assert code == 1
    assert f"FAIL: chain broken at record {seq}: record {seq} was altered" in output


def test_verify_reports_a_deleted_record(snapshot: Snapshot, tmp_path: Path) -> None:
    config = snapshot.copy(tmp_path)
    seq = snapshot.issued_seq(config, snapshot.serials[1]) + 1
    edit(config, ("DELETE FROM audit_chain WHERE seq = ?", (seq,)))
    code, output = verify_copy(config, snapshot.token)
    assert code == 1
    assert f"FAIL: chain broken at record {seq}: record {seq} is missing" in output


def test_verify_reports_reordered_records(snapshot: Snapshot, tmp_path: Path) -> None:
    config = snapshot.copy(tmp_path)
    first = snapshot.issued_seq(config, snapshot.serials[0])
    second = snapshot.issued_seq(config, snapshot.serials[1])
    edit(
        config,
        (
            "UPDATE audit_chain SET record = CASE seq "
            "WHEN ? THEN (SELECT record FROM audit_chain WHERE seq = ?) "
            "ELSE (SELECT record FROM audit_chain WHERE seq = ?) END WHERE seq IN (?, ?)",
            (first, second, first, first, second),
        ),
    )
    code, output = verify_copy(config, snapshot.token)
    assert code == 1
    assert (
        f"FAIL: chain broken at record {first}: record {first} holds sequence number {second}"
        in output
    )


def test_verify_reports_an_inserted_record(snapshot: Snapshot, tmp_path: Path) -> None:
    """The intruder links its record properly to its predecessor and renumbers the
    rest; the record it displaced no longer fits."""
    config = snapshot.copy(tmp_path)
    seq = snapshot.issued_seq(config, snapshot.serials[1])
    before = next(r for r in chain_rows(config.parent / "state" / "kubeca.db") if r.seq == seq - 1)
    forged = json.dumps({"event": "certificate.refused", "seq": seq}, separators=(",", ":"))
    edit(
        config,
        ("UPDATE audit_chain SET seq = -(seq + 1) WHERE seq >= ?", (seq,)),
        ("UPDATE audit_chain SET seq = -seq WHERE seq < 0", ()),
        (
            "INSERT INTO audit_chain VALUES (?, ?, ?, ?)",
            (seq, forged, before.hash, link_hash(before.hash, forged)),
        ),
    )
    code, output = verify_copy(config, snapshot.token)
    assert code == 1
    assert (
        f"FAIL: chain broken at record {seq + 1}: record {seq + 1} holds sequence number {seq} "
        in output
    )


def test_verify_reports_records_cut_after_a_checkpoint(snapshot: Snapshot, tmp_path: Path) -> None:
    config = snapshot.copy(tmp_path)
    edit(config, ("DELETE FROM audit_chain WHERE seq >= ?", (snapshot.checkpoint_seq - 1,)))
    code, output = verify_copy(config, snapshot.token)
    assert code == 1
    assert "chain broken" not in output
    assert (
        f"FAIL: checkpoint at record {snapshot.checkpoint_seq} names a record that is gone"
        in output
    )
    for serial in snapshot.serials[3:]:  # issued after the checkpoint: their records are gone
        assert f"FAIL: certificate {serial} has no matching audit record" in output


def test_verify_catches_rewritten_history_through_the_signed_checkpoint(
    snapshot: Snapshot, tmp_path: Path
) -> None:
    config = snapshot.copy(tmp_path)
    database = config.parent / "state" / "kubeca.db"
    seq = snapshot.issued_seq(config, snapshot.serials[0])
    rows = chain_rows(database)
    statements: list[tuple[str, tuple[Any, ...]]] = []
    prev = GENESIS
    for row in rows:
        record = (
            row.record.replace("kubeca-test-admin", "mallory") if row.seq == seq else row.record
        )
        statements.append(
            (
                "UPDATE audit_chain SET record = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (record, prev, link_hash(prev, record), row.seq),
            )
        )
        prev = link_hash(prev, record)
    edit(config, *statements)
    assert first_broken_link(chain_rows(database)) is None
    code, output = verify_copy(config, snapshot.token)
    assert code == 1
    assert "chain broken" not in output
    assert (
        f"FAIL: checkpoint at record {snapshot.checkpoint_seq} does not match the chain "
        "(history before it was rewritten)" in output
    )


def test_verify_reports_a_forged_checkpoint(snapshot: Snapshot, tmp_path: Path) -> None:
    config = snapshot.copy(tmp_path)
    head = next(
        r
        for r in chain_rows(config.parent / "state" / "kubeca.db")
        if r.seq == snapshot.checkpoint_seq
    )
    unsigned = Checkpoint(head.seq, head.hash, datetime.now(UTC), b"")
    forger = ec.generate_private_key(ec.SECP256R1())
    forged = Checkpoint(
        head.seq, head.hash, unsigned.signed_at, sign_bytes(forger, unsigned.message())
    )
    edit(
        config,
        (
            "UPDATE checkpoints SET signature = ?, signed_at = ? WHERE seq = ?",
            (forged.signature, forged.signed_at.timestamp(), head.seq),
        ),
    )
    code, output = verify_copy(config, snapshot.token)
    assert code == 1
    assert f"FAIL: checkpoint at record {head.seq} has no valid signature" in output


def test_verify_reports_inventory_rows_without_their_issued_record(
    snapshot: Snapshot, tmp_path: Path
) -> None:
    config = snapshot.copy(tmp_path)
    moved, altered = snapshot.serials[0], snapshot.serials[2]
    seq = snapshot.issued_seq(config, altered)
    edit(
        config,
        # A certificate slipped into the inventory, pointing at someone else's record.
        (
            "INSERT INTO certificates SELECT 'abcdef012345', authority, profile, subject, sans, "
            "public_key_sha256, fingerprint_sha256, not_before, not_after, caller, "
            "request_fingerprint, certificate_pem, audit_seq, NULL, NULL, issuer_key_id "
            "FROM certificates WHERE serial = ?",
            (moved,),
        ),
        # A row pointing at a record that is not its issuance.
        ("UPDATE certificates SET audit_seq = 1 WHERE serial = ?", (moved,)),
        # A row whose issued record was altered to name another serial.
        (
            "UPDATE audit_chain SET record = replace(record, ?, ?) WHERE seq = ?",
            (f'"serial":"{altered}"', '"serial":"abcdef"', seq),
        ),
    )
    code, output = verify_copy(config, snapshot.token)
    assert code == 1
    assert "FAIL: certificate abcdef012345 has no matching audit record" in output
    assert f"FAIL: certificate {moved} has no matching audit record (record 1)" in output
    assert f"FAIL: chain broken at record {seq}: record {seq} was altered" in output
    assert f"FAIL: certificate {altered} has no matching audit record (record {seq})" in output


def test_verify_reports_an_inventory_row_unrevoked_behind_the_chains_back(
    snapshot: Snapshot, tmp_path: Path
) -> None:
    """The chain records the revocation; the inventory (from which every CRL is built)
    no longer says so: the next CRL would silently drop the certificate."""
    config = snapshot.copy(tmp_path)
    edit(
        config,
        (
            "UPDATE certificates SET revoked_at = NULL, revocation_reason = NULL WHERE serial = ?",
            (snapshot.revoked,),
        ),
    )
    code, output = verify_copy(config, snapshot.token)
    assert code == 1, output
    assert snapshot.revoked in output


def test_verify_reports_an_inventory_row_whose_certificate_was_swapped(
    snapshot: Snapshot, tmp_path: Path
) -> None:
    """The row's certificate and fingerprint are no longer the ones its issued record names."""
    config = snapshot.copy(tmp_path)
    victim, donor = snapshot.serials[0], snapshot.serials[1]
    edit(
        config,
        (
            "UPDATE certificates SET "
            "certificate_pem = (SELECT certificate_pem FROM certificates WHERE serial = ?), "
            "fingerprint_sha256 = (SELECT fingerprint_sha256 FROM certificates WHERE serial = ?) "
            "WHERE serial = ?",
            (donor, donor, victim),
        ),
    )
    code, output = verify_copy(config, snapshot.token)
    assert code == 1, output
    assert victim in output


# --- kill -9 under load -------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (the supervisor's spawned workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def issue_until_failure(
    client: Client, stop: threading.Event, received: list[IssuedCertificate]
) -> None:
    while not stop.is_set():
        try:
            received.append(client.issue_certificate("kube-proxy", new_csr()))
        except Exception:  # the server was killed under this request: stop asking
            return


def test_kill_9_while_sixteen_clients_issue_loses_no_certificate(
    ledger_token: Token, tmp_path: Path
) -> None:
    config = revoking_config(tmp_path / "crash", ledger_token)
    run_server_cli(config, ledger_token, "init")
    server = RunningServer(config, ledger_token, workers=2).start()
    try:
        clients = [server.client(TIMEOUT, OWN_CONNECTION) for _ in range(16)]
        received: list[list[IssuedCertificate]] = [[] for _ in clients]
        stop = threading.Event()
        threads = [
            threading.Thread(target=issue_until_failure, args=(c, stop, r))
            for c, r in zip(clients, received, strict=True)
        ]
        for thread in threads:
            thread.start()
        time.sleep(2)
        assert server.process is not None
        supervisor = server.process.pid
        for pid in (supervisor, *descendants(supervisor)):
            os.kill(pid, signal.SIGKILL)
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT + 5)
        for c in clients:
            c.close()
        assert server.stop() == -signal.SIGKILL

        server.start()
        with server.client(TIMEOUT) as client:
            after = client.issue_certificate("kube-proxy", new_csr()).serial
            # Leaves only: the operator's credential is in the inventory too.
            inventory = [
                c.serial for c in client.certificates() if c.authority != "kubeca-service-ca"
            ]
    finally:
        server.stop()
    serials = [issued.serial for batch in received for issued in batch]
    chained = issued_serials(server.state_dir / "kubeca.db")
    assert len(serials) >= 16, "the clients were issuing when the server was killed"
    assert len(set(serials)) == len(serials)
    assert len(set(chained)) == len(chained)
    assert len(set(inventory)) == len(inventory)
    assert set(serials) <= set(inventory)
    assert set(serials) <= set(chained)
    assert set(inventory) == set(chained)
    assert after in inventory
    code, output = verify_copy(config, ledger_token)
    assert code == 0, output
