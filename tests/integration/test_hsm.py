"""The HSM side, for real: key attributes in the token, init, start-up checks,
restarts, concurrency across worker processes, recovery, and losing the token."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2
from kubeca_client.client import Client
from kubeca_client.errors import Unavailable
from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key
from kubeca_server.keys.pkcs11_backend import Pkcs11Backend
from pkcs11 import Attribute, KeyType, ObjectClass

from tests.support import (
    SOFTHSM_MODULE,
    RunningServer,
    Token,
    make_token,
    run_server_cli,
    write_server_config,
)

LABELS = (
    "kubeca/kubernetes-ca",
    "kubeca/etcd-ca",
    "kubeca/front-proxy-ca",
    "kubeca/kubeca-service-ca",
)
# The service-account token-signing key: no certificate, the same token attributes.
SIGNING_KEY_LABEL = "kubeca/service-account"


@pytest.fixture(scope="module")
def initialized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Token, Path]:
    """A token of this module's own with the CAs created in it, and its config."""
    base = tmp_path_factory.mktemp("hsm")
    token = make_token(base / "hsm")
    config = write_server_config(base / "server", token)
    result = run_server_cli(config, token, "init")
    assert result.stdout.count("created an ECDSA-P256 key in the HSM") == 4
    assert "server TLS certificate: issued" in result.stdout
    return token, config


@pytest.fixture(scope="module")
def in_process_session(initialized: tuple[Token, Path]) -> Iterator[pkcs11.Session]:
    """A python-pkcs11 session in the test process, to read what the token holds."""
    token, _ = initialized
    os.environ["SOFTHSM2_CONF"] = str(token.conf)
    lib = pkcs11.lib(SOFTHSM_MODULE)
    lib.reinitialize()  # SoftHSM reads SOFTHSM2_CONF at initialization
    session = lib.get_token(token_label=token.label).open(user_pin=token.pin)
    yield session
    # The recovery test re-initializes the module, which ends every session in the
    # process, this one included.
    with contextlib.suppress(pkcs11.exceptions.SessionHandleInvalid):
        session.close()


def test_serve_runs_one_worker_per_core_unless_told(initialized: tuple[Token, Path]) -> None:
    token, config = initialized
    server = RunningServer(config, token, workers=None)
    logged_before = server.log_path.stat().st_size if server.log_path.exists() else 0
    server.start()
    try:
        with server.client(30) as client:
            assert client.ca_certificates("kubernetes-ca")
    finally:
        assert server.stop() == 0
    with server.log_path.open("rb") as log:
        log.seek(logged_before)
        lines = log.read().decode().splitlines()
    events = [json.loads(line) for line in lines if line[:1] == "{"]
    cores = len(os.sched_getaffinity(0))
    assert sum(e.get("event") == "server.listening" for e in events) == cores
    if cores > 1:
        assert [e["workers"] for e in events if e.get("event") == "server.supervising"] == [cores]


def test_ca_keys_in_the_token_are_sensitive_never_extractable_and_sign_only(
    in_process_session: pkcs11.Session,
) -> None:
    for label in (*LABELS, SIGNING_KEY_LABEL):
        key = in_process_session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
        assert key[Attribute.TOKEN] is True
        assert key[Attribute.PRIVATE] is True
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.ALWAYS_SENSITIVE] is True
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.NEVER_EXTRACTABLE] is True
        assert key[Attribute.SIGN] is True
        assert key[Attribute.DECRYPT] is False
        assert key[Attribute.DERIVE] is False
        assert key[Attribute.UNWRAP] is False
        # The secret part: CKA_VALUE of an EC key, the private exponent of an RSA key
        # (the service-account key is RSA by default).
        secret = Attribute.VALUE if key.key_type == KeyType.EC else Attribute.PRIVATE_EXPONENT
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            _ = key[secret]


def test_ca_certificates_belong_to_the_token_keys(
    initialized: tuple[Token, Path], in_process_session: pkcs11.Session
) -> None:
    from pkcs11.util.ec import encode_ec_public_key

    _, config = initialized
    for label in LABELS:
        name = label.removeprefix("kubeca/")
        cert = x509.load_pem_x509_certificate(
            (config.parent / "state/ca" / f"{name}.crt").read_bytes()
        )
        public = in_process_session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label)
        spki = encode_ec_public_key(public)
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        assert (
            cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == spki
        )


def test_no_ca_key_material_is_on_disk(initialized: tuple[Token, Path]) -> None:
    """The only private key in the state directory is the server's own TLS key."""
    _, config = initialized
    state = config.parent / "state"
    with_keys = [p for p in state.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    assert with_keys == [state / "tls" / "server.key"]
    assert (state / "tls" / "server.key").stat().st_mode & 0o777 == 0o600


def test_init_is_idempotent_and_never_replaces_a_key(
    initialized: tuple[Token, Path], in_process_session: pkcs11.Session
) -> None:
    token, config = initialized
    ca_dir = config.parent / "state" / "ca"
    before = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    objects_before = len(list(in_process_session.get_objects()))
    result = run_server_cli(config, token, "init")
    assert result.stdout.count("already initialized, nothing changed") == 5
    assert "server TLS certificate: current" in result.stdout
    assert {p.name: p.read_bytes() for p in ca_dir.iterdir()} == before
    assert len(list(in_process_session.get_objects())) == objects_before


def test_init_refuses_a_certificate_without_its_key(
    initialized: tuple[Token, Path], tmp_path: Path
) -> None:
    _, config = initialized
    other = make_token(tmp_path / "empty-hsm", label="other")
    copy = write_server_config(tmp_path / "server", other)
    shutil.copytree(config.parent / "state" / "ca", tmp_path / "server" / "state" / "ca")
    result = run_server_cli(copy, other, "init", check=False)
    assert result.returncode != 0
    assert "refusing to make a new CA under an existing certificate" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_to_start_when_a_certificate_does_not_match_its_key(
    initialized: tuple[Token, Path], tmp_path: Path
) -> None:
    token, config = initialized
    swapped = write_server_config(tmp_path / "server", token)
    shutil.copytree(config.parent / "state", tmp_path / "server" / "state")
    # The CA certificates live in the store: give etcd-ca the kubernetes-ca certificate.
    with sqlite3.connect(tmp_path / "server" / "state" / "kubeca.db") as db:
        db.execute(
            "UPDATE ca_generations SET certificate_pem = (SELECT certificate_pem FROM "
            "ca_generations WHERE authority = 'kubernetes-ca') WHERE authority = 'etcd-ca'"
        )
    result = run_server_cli(swapped, token, "serve", check=False)
    assert result.returncode == 78
    assert "etcd-ca" in result.stderr and "does not match the HSM key" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_wrong_pin_stops_the_server_with_a_clear_message(
    initialized: tuple[Token, Path], tmp_path: Path
) -> None:
    token, _ = initialized
    wrong = Token(tmp_path, token.label)
    tmp_path.joinpath("hsm-pin").write_text("not-the-pin\n")
    tmp_path.joinpath("softhsm2.conf").write_text(token.conf.read_text())
    bad = write_server_config(tmp_path / "server", wrong)
    result = run_server_cli(bad, wrong, "init", check=False)
    assert result.returncode == 78
    assert "refused the PIN" in result.stderr
    assert "not-the-pin" not in result.stderr + result.stdout


def _issue_admin(client: Client) -> x509.Certificate:
    key = generate_private_key(KeyAlgorithm.ECDSA_P256)
    return client.issue_certificate("admin", build_csr(key)).certificate


def test_restart_keeps_the_same_cas(initialized: tuple[Token, Path]) -> None:
    token, config = initialized
    server = RunningServer(config, token).start()
    try:
        with server.client() as client:
            before = {c.authority: c.certificate_pem for c in client.ca_certificates()}
            issued = _issue_admin(client)
    finally:
        assert server.stop() == 0
    server.start()
    try:
        with server.client() as client:
            after = {c.authority: c.certificate_pem for c in client.ca_certificates()}
            again = _issue_admin(client)
    finally:
        server.stop()
    assert after == before
    ca = x509.load_pem_x509_certificate(after["kubernetes-ca"].encode())
    issued.verify_directly_issued_by(ca)
    again.verify_directly_issued_by(ca)


def test_sixteen_clients_issue_500_certificates_across_two_workers(
    initialized: tuple[Token, Path],
) -> None:
    token, config = initialized
    server = RunningServer(config, token, workers=2).start()
    csrs = [build_csr(generate_private_key(KeyAlgorithm.ECDSA_P256)) for _ in range(500)]
    # Each client keeps a connection of its own: SO_REUSEPORT spreads connections, not
    # requests, and clients sharing one connection would all reach one worker.
    clients = [server.client(30, (("grpc.use_local_subchannel_pool", 1),)) for _ in range(16)]
    audit_before = _audit_lines(server.audit_log)
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(
                pool.map(
                    lambda i: clients[i % 16].issue_certificate("admin", csrs[i]).certificate,
                    range(500),
                )
            )
        with clients[0] as client:
            ca = x509.load_pem_x509_certificate(
                client.ca_certificates("kubernetes-ca")[0].certificate_pem.encode()
            )
    finally:
        for c in clients:
            c.close()
        assert server.stop() == 0
    assert len(results) == 500
    assert len({c.serial_number for c in results}) == 500
    for cert in results:
        cert.verify_directly_issued_by(ca)
    issued = [
        r
        for r in _audit_lines(server.audit_log)[len(audit_before) :]
        if r["event"] == "certificate.issued"
    ]
    assert {r["serial"] for r in issued} == {format(c.serial_number, "x") for c in results}
    assert len({r["worker"] for r in issued}) == 2, "both worker processes issued certificates"


def _audit_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pin_never_appears_in_logs_or_audit(initialized: tuple[Token, Path]) -> None:
    token, config = initialized
    server = RunningServer(config, token).start()
    try:
        with server.client() as client:
            _issue_admin(client)
    finally:
        server.stop()
    pin = token.pin
    assert pin not in server.log_path.read_text()
    assert pin not in server.audit_log.read_text()


def test_backend_recovers_a_lost_session(
    initialized: tuple[Token, Path], in_process_session: pkcs11.Session
) -> None:
    # in_process_session keeps this process logged in: the backend must cope with that.
    token, _ = initialized
    backend = Pkcs11Backend(SOFTHSM_MODULE, token.label, token.pin)
    try:
        key = backend.find_key("kubeca/etcd-ca")
        assert key is not None
        signature_1 = key.sign(b"before", ec.ECDSA(hashes.SHA256()))
        # Pull the session out from under the backend, as a device reset would.
        backend._session.close()
        signature_2 = key.sign(b"after", ec.ECDSA(hashes.SHA256()))
        key.public_key().verify(signature_1, b"before", ec.ECDSA(hashes.SHA256()))
        key.public_key().verify(signature_2, b"after", ec.ECDSA(hashes.SHA256()))
    finally:
        backend.close()


def test_losing_the_token_makes_the_service_unavailable_until_it_returns(tmp_path: Path) -> None:
    token = make_token(tmp_path / "hsm")
    config = write_server_config(tmp_path / "server", token)
    run_server_cli(config, token, "init")
    server = RunningServer(config, token).start()
    tokens = token.dir / "tokens"
    away = token.dir / "tokens.away"
    try:
        with server.client() as client:
            _issue_admin(client)
            tokens.rename(away)
            tokens.mkdir()
            server.wait_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            with pytest.raises(Unavailable):
                _issue_admin(client)
            tokens.rmdir()
            away.rename(tokens)
            server.wait_health(health_pb2.HealthCheckResponse.SERVING)
            _issue_admin(client)
    finally:
        if away.exists():
            if tokens.exists():
                tokens.rmdir()
            away.rename(tokens)
        server.stop()


# --- failure modes, each in a process of its own: PKCS#11 login is per process ---------

PROBE = """
import json, sys
import pkcs11
from kubeca_client.errors import KubecaError
from kubeca_server.keys.pkcs11_backend import Pkcs11Backend
module, label, pin, case = sys.argv[1:5]
out = {}
backend = Pkcs11Backend(module, label, pin)
if case == "pin":
    logins = []
    connect = backend._connect
    def counting_connect():
        logins.append(1)
        connect()
    backend._connect = counting_connect
    backend._pin = "not-the-pin"
    backend._session.close()  # a lost session: the next call must log in again
    errors = []
    for _ in range(4):
        try:
            backend.find_key("kubeca/etcd-ca")
        except KubecaError as exc:
            errors.append([exc.status, exc.message])
    out = {"logins": len(logins), "errors": errors}
elif case == "duplicate":
    from kubeca_client.keys import KeyAlgorithm
    backend.create_key("dup", KeyAlgorithm.ECDSA_P256)
    session = backend._session
    from pkcs11 import KeyType, Attribute
    from pkcs11.util.ec import encode_named_curve_parameters
    params = session.create_domain_parameters(
        KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
    params.generate_keypair(store=True, label="dup")  # a second key, as a careless tool might
    try:
        backend.find_key("dup")
        out = {"error": None}
    except KubecaError as exc:
        out = {"error": [exc.status, exc.message]}
    out["after"] = backend.find_key("kubeca/etcd-ca") is not None  # no search left open
elif case == "private-only":
    session = backend._session
    from pkcs11 import Attribute, ObjectClass
    for obj in session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                                    Attribute.LABEL: "kubeca/front-proxy-ca"}):
        obj.destroy()
    try:
        backend.find_key("kubeca/front-proxy-ca")
        out = {"error": None}
    except KubecaError as exc:
        out = {"error": [exc.status, exc.message]}
print(json.dumps(out))
"""


def _probe(token: Token, case: str) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, SOFTHSM_MODULE, token.label, token.pin, case],
        env=token.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture
def scratch_token(tmp_path: Path) -> Token:
    """A token with CAs of its own, for tests that damage it."""
    token = make_token(tmp_path / "hsm")
    run_server_cli(write_server_config(tmp_path / "server", token), token, "init")
    return token


def test_a_refused_pin_is_tried_once_and_never_again(scratch_token: Token) -> None:
    outcome = _probe(scratch_token, "pin")
    assert outcome["logins"] == 1, "a refused PIN must not be retried: it can lock an HSM"
    errors = outcome["errors"]
    assert isinstance(errors, list) and len(errors) == 4
    for status, message in errors:
        assert status == "UNAVAILABLE"
        assert "refused the PIN" in message and "will not try it again" in message


def test_two_keys_under_one_label_are_a_clear_error_and_leave_no_search_open(
    scratch_token: Token,
) -> None:
    outcome = _probe(scratch_token, "duplicate")
    assert outcome["error"] is not None
    status, message = outcome["error"]  # type: ignore[misc]
    assert status == "FAILED_PRECONDITION"
    assert "labelled 'dup'" in message and "remove the extra ones" in message
    assert outcome["after"] is True


def test_a_private_key_without_its_public_object_is_not_taken_for_missing(
    scratch_token: Token,
) -> None:
    outcome = _probe(scratch_token, "private-only")
    assert outcome["error"] is not None
    status, message = outcome["error"]  # type: ignore[misc]
    assert status == "FAILED_PRECONDITION"
    assert "holds the private key 'kubeca/front-proxy-ca' but not its public key" in message


def test_a_token_label_that_names_no_token_stops_the_server_as_a_config_error(
    initialized: tuple[Token, Path], tmp_path: Path
) -> None:
    token, _ = initialized
    wrong = Token(token.dir, "no-such-token")
    config = write_server_config(tmp_path / "server", wrong)
    result = run_server_cli(config, wrong, "init", check=False)
    # 78, not 69: a service manager must not retry a setting forever.
    assert result.returncode == 78
    assert "no token labelled 'no-such-token'" in result.stderr
    assert "Traceback" not in result.stderr


# Each process opens the backend as a starting worker does, then re-initializes the
# module so that the next open logs in again (a login rewrites the token's files).
_OPEN_REPEATEDLY = """
import sys
import pkcs11
from kubeca_server.keys.pkcs11_backend import Pkcs11Backend
module, label, pin = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().strip()
for _ in range(40):
    Pkcs11Backend(module, label, pin).close()
    pkcs11.lib(module).reinitialize()
"""


def test_workers_starting_together_all_find_their_token(tmp_path: Path) -> None:
    # SoftHSM leaves out a token whose files another process is rewriting while it
    # scans them: sibling workers logging in at once saw "no token labelled ...".
    token = make_token(tmp_path / "hsm", label="kubeca-siblings")
    args = [SOFTHSM_MODULE, token.label, str(token.pin_file)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPEN_REPEATEDLY, *args],
            env=token.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    failures = []
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        if proc.returncode != 0:
            failures.append(err.strip().splitlines()[-1:])
    assert failures == []
