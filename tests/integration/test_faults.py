"""Faults of issue 10 against a real server: a token swapped for one with the same
label and PIN but other keys, kill -9 under load then the audit mirror, and an
inventory far larger than one answer can hold."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2
from kubeca_client.authorities import SERVICE_CA
from kubeca_client.client import Client, channel_credentials
from kubeca_client.errors import Unauthenticated, Unavailable
from kubeca_client.keys import KeyAlgorithm, generate_private_key
from kubeca_client.pki import build_csr
from kubeca_server.issuance.credentials import REFRESH_SECONDS
from kubeca_server.ledger.chain import ChainRow
from kubeca_server.ledger.mirror import mirror_line
from kubeca_server.store import CertificateRow, TokenRecord
from kubeca_server.store.sqlite import SQLiteStore

from tests.integration.test_ledger import descendants
from tests.support import (
    BIN,
    OPERATOR,
    RunningServer,
    Token,
    make_token,
    run_server_cli,
    write_server_config,
)

LABEL = "kubeca-swap"


def _issue_admin(client: Client) -> str:
    key = generate_private_key(KeyAlgorithm.ECDSA_P256)
    return client.issue_certificate("admin", build_csr(key), force_new=True).serial


def _twin_token(original: Token, directory: Path) -> Token:
    """A token with the same label and PIN as ``original``, CAs made by an init of its
    own: the same key labels, other keys."""
    directory.mkdir(parents=True, mode=0o700)
    for secret in ("hsm-pin", "hsm-so-pin"):
        shutil.copy2(original.dir / secret, directory / secret)
    twin = make_token(directory, original.label)
    run_server_cli(write_server_config(directory / "server", twin), twin, "init")
    return twin


# --- token swap --------------------------------------------------------------------------


def test_a_token_with_other_keys_behind_the_same_labels_makes_the_service_unavailable(
    tmp_path: Path,
) -> None:
    token = make_token(tmp_path / "hsm", LABEL)
    config = write_server_config(tmp_path / "server", token)
    run_server_cli(config, token, "init")
    twin = _twin_token(token, tmp_path / "twin")
    assert twin.pin == token.pin
    server = RunningServer(config, token).start()
    tokens, away = token.dir / "tokens", token.dir / "tokens.away"
    try:
        with server.client() as client:
            before = _issue_admin(client)
            # The swap: the server's token directory now holds the twin.
            tokens.rename(away)
            shutil.copytree(twin.dir / "tokens", tokens)
            server.wait_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            for _ in range(3):
                with pytest.raises(Unavailable, match="the HSM's keys do not match the CA"):
                    _issue_admin(client)
            assert server.health() == health_pb2.HealthCheckResponse.NOT_SERVING
            # The right token back: the keys check out again.
            shutil.rmtree(tokens)
            away.rename(tokens)
            server.wait_health(health_pb2.HealthCheckResponse.SERVING)
            after = _issue_admin(client)
            serials = {c.serial for c in client.certificates(profile="admin")}
    finally:
        if away.exists():
            shutil.rmtree(tokens, ignore_errors=True)
            away.rename(tokens)
        server.stop()
    assert {before, after} <= serials
    assert len(serials) == 2, "nothing was issued while the wrong keys were in place"
    logged = [
        json.loads(line) for line in server.log_path.read_text().splitlines() if line[:1] == "{"
    ]
    mismatches = [r for r in logged if r.get("event") == "hsm.keys_mismatch"]
    assert mismatches and all(r["level"] == "error" for r in mismatches)
    assert "do not match the CA certificates" in mismatches[0]["problem"]


# --- crash, then the mirror --------------------------------------------------------------


def _chain(database: Path) -> list[ChainRow]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT seq, record, prev_hash, hash FROM audit_chain ORDER BY seq")
        return [ChainRow(int(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


def _issue_until_failure(client: Client, stop: threading.Event, serials: list[str]) -> None:
    while not stop.is_set():
        try:
            serials.append(_issue_admin(client))
        except Exception:  # the server was killed under this request: stop asking
            return


def _kill_all(server: RunningServer) -> None:
    assert server.process is not None
    supervisor = server.process.pid
    for pid in (supervisor, *descendants(supervisor)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert server.stop() == -signal.SIGKILL


def _verify(config: Path, token: Token) -> tuple[int, str]:
    done = run_server_cli(config, token, "audit", "verify", check=False)
    return done.returncode, done.stdout + done.stderr


def test_after_kill_9_under_load_the_mirror_catches_up_with_the_chain(tmp_path: Path) -> None:
    token = make_token(tmp_path / "hsm")
    config = write_server_config(tmp_path / "server", token)
    run_server_cli(config, token, "init")
    server = RunningServer(config, token, workers=2).start()
    database = server.state_dir / "kubeca.db"
    own = (("grpc.use_local_subchannel_pool", 1),)
    clients = [server.client(20, own) for _ in range(8)]
    serials: list[list[str]] = [[] for _ in clients]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_issue_until_failure, args=(c, stop, s))
        for c, s in zip(clients, serials, strict=True)
    ]
    try:
        for thread in threads:
            thread.start()
        time.sleep(2)
        _kill_all(server)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        for c in clients:
            c.close()
    assert sum(map(len, serials)) >= 8, "the clients were issuing when the server was killed"

    # What the campaign saw after kill -9: the mirror without the chain's last records
    # (the writer died between commit and mirror), the last of them half written.
    lines = server.audit_log.read_bytes().splitlines(keepends=True)
    assert len(lines) > 10
    cut = [*lines[:-6], lines[-6][:20]]
    server.audit_log.write_bytes(b"".join(cut))
    kept = len(lines) - 6
    head = _chain(database)[-1].seq
    code, output = _verify(config, token)
    assert code == 0, output
    assert f"lags {head - kept} records behind the chain (from record {kept + 1})" in output

    server.start()
    server.stop()
    rows = _chain(database)
    mirrored = server.audit_log.read_text().splitlines()
    assert mirrored == [mirror_line(row) for row in rows], "the mirror is the chain, line by line"
    code, output = _verify(config, token)
    assert code == 0, output
    assert "lags" not in output

    # A mirror that differs from the chain is a problem, not a lag.
    fields = json.loads(mirrored[3])
    fields["worker"] += 1
    edited = json.dumps(fields, sort_keys=True, ensure_ascii=True)
    server.audit_log.write_text("\n".join([*mirrored[:3], edited, *mirrored[4:]]) + "\n")
    code, output = _verify(config, token)
    assert code == 1
    assert "mirror line 4 differs from chain record 4" in output


# --- operator credentials: revoked, refused everywhere, renewed ----------------------------


def _credential_serial(directory: Path) -> str:
    certificate = x509.load_pem_x509_certificate((directory / "client.crt").read_bytes())
    return format(certificate.serial_number, "x")


def _as(server: RunningServer, directory: Path) -> Client:
    """A client with the credential in ``directory``, on a connection of its own (so
    that, over many clients, both workers answer)."""
    credentials = channel_credentials(
        server.service_ca.read_bytes(),
        (directory / "client.crt").read_bytes(),
        (directory / "client.key").read_bytes(),
    )
    return Client(
        server.address, 10, (("grpc.use_local_subchannel_pool", 1),), credentials=credentials
    )


def _renew(server: RunningServer, revoked: Path) -> tuple[str, str]:
    """A revoked credential is not renewed; a current one is: a new certificate for the
    same identity, in the same directory, that works. The serials before and after."""
    refused = run_server_cli(
        server.config, server.token, "credentials", "issue", "--renew", str(revoked), check=False
    )
    assert refused.returncode != 0
    assert "was revoked" in refused.stderr
    before = _credential_serial(server.credentials_dir)
    renewed = run_server_cli(
        server.config, server.token, "credentials", "issue", "--renew", str(server.credentials_dir)
    )
    assert "renewed" in renewed.stdout
    after = _credential_serial(server.credentials_dir)
    assert after != before
    with _as(server, server.credentials_dir) as client:
        client.profiles()
    return before, after


def _assert_listed(serial: str, fetched: bytes, published: Path) -> None:
    """The service CA's CRL, as GetCRL answers it and as the file on disk, lists it."""
    for der in (fetched, published.read_bytes()):
        crl = x509.load_der_x509_crl(der)
        assert crl.get_revoked_certificate_by_serial_number(int(serial, 16)) is not None


def test_a_revoked_operator_credential_is_refused_by_every_worker_within_seconds(
    tmp_path: Path,
) -> None:
    token = make_token(tmp_path / "hsm")
    config = write_server_config(tmp_path / "server", token)
    with config.open("a") as f:
        f.write("revoke = true\n")  # the test operator's grant is the last table
    run_server_cli(config, token, "init")
    server = RunningServer(config, token, workers=2).start()
    victim = tmp_path / "victim"
    try:
        run_server_cli(
            config, token, "credentials", "issue", "--name", OPERATOR, "--out", str(victim)
        )
        serial = _credential_serial(victim)
        with _as(server, victim) as client:
            client.profiles()
        with server.client() as operator:
            listed = operator.certificates(authority=SERVICE_CA)
            assert serial in {c.serial for c in listed}, "credentials are in the inventory"
        done = subprocess.run(
            [
                str(BIN / "kubeca"),
                "--config",
                str(server.client_config(tmp_path / "c.toml")),
                "revoke",
                "--serial",
                serial,
                "--reason",
                "key_compromise",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        revoked_at = time.monotonic()
        time.sleep(REFRESH_SECONDS + 1)
        refused = 0
        for _ in range(12):
            with _as(server, victim) as client:
                with pytest.raises(Unauthenticated, match="was revoked"):
                    client.profiles()
                with pytest.raises(Unauthenticated, match="was revoked"):
                    client.crl("etcd-ca")
                refused += 1
        assert time.monotonic() - revoked_at < 30
        with server.client() as operator:
            operator.profiles()  # the other credential of the same identity still works
            fetched = operator.crl(SERVICE_CA).der
        _assert_listed(serial, fetched, server.state_dir / "crl" / f"{SERVICE_CA}.crl")

        before, after = _renew(server, victim)
    finally:
        server.stop()
    code, output = _verify(config, token)
    assert code == 0, output
    records = [json.loads(line) for line in server.audit_log.read_text().splitlines()]
    renewals = [r for r in records if r["event"] == "credentials.issued" and r.get("renews")]
    assert [(r["renews"], r["serial"]) for r in renewals] == [(before, after)]
    refusals = [r for r in records if "was revoked" in str(r.get("reason", ""))]
    assert len(refusals) == 2 * refused, "every call with the revoked credential, audited"
    assert len({r["worker"] for r in refusals}) == 2, "both workers refused it"


# --- many rows, then list ------------------------------------------------------------------

ROWS = 100_000
TOKENS = 2_500  # bootstrap tokens: 25 pages of the default 100


def _fill_inventory(database: Path, rows: int) -> None:
    """``rows`` kube-proxy certificates (and TOKENS bootstrap tokens) straight into the
    store, in one unit of work (signing them would take an hour); each certificate
    names one bulk audit record."""
    store = SQLiteStore(database)
    try:
        now = datetime.now(UTC)
        with store.unit() as unit:
            seq = unit.audit.append({"event": "test.bulk_inventory", "rows": rows}).seq
            for n in range(rows):
                unit.inventory.add(
                    CertificateRow(
                        serial=f"{0xB0000000 + n:x}",
                        authority="kubernetes-ca",
                        profile="kube-proxy",
                        subject="CN=system:kube-proxy",
                        sans=(),
                        public_key_sha256=f"{n:064x}",
                        fingerprint_sha256=f"{n:064x}",
                        not_before=now,
                        not_after=now + timedelta(days=1, seconds=n),
                        caller=OPERATOR,
                        request_fingerprint=f"bulk-{n}",
                        certificate_pem="-----BEGIN CERTIFICATE-----\n(bulk)\n",
                        audit_seq=seq,
                    )
                )
            for n in range(TOKENS):
                unit.tokens.add(
                    TokenRecord(
                        token_id=f"{n:06d}",
                        secret_hash="00" * 32,
                        profiles=("kubelet-client",),
                        node_name=f"worker-{n}",
                        addresses=(),
                        expires_at=now + timedelta(hours=1, seconds=n),
                        created_by=OPERATOR,
                        created_at=now,
                    )
                )
    finally:
        store.close()


def _issue_timed(client: Client, count: int) -> list[float]:
    seconds = []
    for _ in range(count):
        started = time.perf_counter()
        _issue_admin(client)
        seconds.append(time.perf_counter() - started)
    return seconds


def test_an_inventory_of_100000_rows_is_listed_page_by_page_while_issuance_goes_on(
    tmp_path: Path,
) -> None:
    token = make_token(tmp_path / "hsm")
    config = write_server_config(tmp_path / "server", token)
    run_server_cli(config, token, "init")
    server = RunningServer(config, token)
    started = time.perf_counter()
    _fill_inventory(server.state_dir / "kubeca.db", ROWS)
    filled = time.perf_counter() - started
    server.start()
    client_config = server.client_config(tmp_path / "client.toml", timeout=60)
    listing: dict[str, object] = {}

    def list_all() -> None:
        began = time.perf_counter()
        done = subprocess.run(
            [str(BIN / "kubeca"), "--config", str(client_config), "certs", "list", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        listing.update(code=done.returncode, out=done.stdout, err=done.stderr)
        listing["seconds"] = time.perf_counter() - began

    try:
        with server.client(60) as client:
            quiet = _issue_timed(client, 20)
            lister = threading.Thread(target=list_all)
            lister.start()
            busy: list[float] = []
            while lister.is_alive():
                busy.extend(_issue_timed(client, 1))
            lister.join()
            after = _issue_timed(client, 5)
        tokens = subprocess.run(
            [str(BIN / "kubeca"), "--config", str(client_config), "token", "list"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        server.stop()
    assert tokens.returncode == 0, tokens.stderr
    listed_ids = [line.split()[0] for line in tokens.stdout.splitlines()[1:]]
    assert sorted(listed_ids) == [f"{n:06d}" for n in range(TOKENS)], "every token, every page"
    assert listing["code"] == 0, str(listing["err"])[-2000:]
    records = json.loads(str(listing["out"]))
    serials = [r["serial"] for r in records]
    assert len(serials) == len(set(serials)), "no record twice across pages"
    bulk = {f"{0xB0000000 + n:x}" for n in range(ROWS)}
    assert bulk <= set(serials), "every row of the inventory, across every page"
    assert len(busy) >= 1 and len(after) == 5, "issuance went on while the list was read"
    figures = {
        "rows": ROWS,
        "fill_seconds": round(filled, 1),
        "list_seconds": round(float(str(listing["seconds"])), 1),
        "issue_ms_quiet_median": round(1000 * sorted(quiet)[len(quiet) // 2], 1),
        "issue_ms_while_listing_median": round(1000 * sorted(busy)[len(busy) // 2], 1),
        "issue_ms_while_listing_max": round(1000 * max(busy), 1),
        "issued_while_listing": len(busy),
    }
    print("many-rows figures:", json.dumps(figures))
