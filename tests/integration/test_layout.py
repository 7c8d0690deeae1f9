"""Whole kubeadm layouts from `kubeca pki`, `sign-csrs`, `check-expiration` and `renew`.

Every command runs as a subprocess against a real server on a real SoftHSM token. The
expectations are transcribed from kubernetes-pki.md ("kubeadm External CA mode" and the
leaf and kubeconfig tables), independently of kubeca_client's own layout tables.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubeca_client.client import Client
from kubeca_client.config import load_client_config

from tests.support import (
    BIN,
    REPO,
    RunningServer,
    Token,
    make_token,
    run_server_cli,
    write_server_config,
)

pytestmark = pytest.mark.integration

KUBECA = str(BIN / "kubeca")
CONFIG_ENV = "KUBECA_CLIENT_CONFIG"
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH

NODE = "cp-1"
ADVERTISE = "192.0.2.10"
ENDPOINT = "k8s.example.internal:6443"
ENDPOINT_URL = "https://k8s.example.internal:6443"
LOCAL_URL = f"https://{ADVERTISE}:6443"

# kubeadm External CA mode: each CA's file base under pki/, and the leaves (crt + key)
# required once that CA's .crt is present without its .key.
CA_BASES = {"kubernetes-ca": "ca", "etcd-ca": "etcd/ca", "front-proxy-ca": "front-proxy-ca"}
REQUIRED_LEAVES = {
    "kubernetes-ca": ("apiserver", "apiserver-kubelet-client"),
    "front-proxy-ca": ("front-proxy-client",),
    "etcd-ca": ("apiserver-etcd-client", "etcd/server", "etcd/peer", "etcd/healthcheck-client"),
}
LEAF_CA = {base: ca for ca, bases in REQUIRED_LEAVES.items() for base in bases}
LEAVES = tuple(LEAF_CA)


@dataclass(frozen=True)
class Identity:
    cn: str
    orgs: tuple[str, ...]
    server: str  # the URL kubeadm puts in this kubeconfig


KUBECONFIGS = {
    "admin.conf": Identity("kubernetes-admin", ("kubeadm:cluster-admins",), ENDPOINT_URL),
    "super-admin.conf": Identity("kubernetes-super-admin", ("system:masters",), ENDPOINT_URL),
    "controller-manager.conf": Identity("system:kube-controller-manager", (), LOCAL_URL),
    "scheduler.conf": Identity("system:kube-scheduler", (), LOCAL_URL),
    "kubelet.conf": Identity(f"system:node:{NODE}", ("system:nodes",), ENDPOINT_URL),
}

# What `kubeadm certs check-expiration` lists, and under which CA (kubeadm's names).
CHECK_EXPIRATION = {
    "admin.conf": "ca",
    "apiserver": "ca",
    "apiserver-etcd-client": "etcd-ca",
    "apiserver-kubelet-client": "ca",
    "controller-manager.conf": "ca",
    "etcd-healthcheck-client": "etcd-ca",
    "etcd-peer": "etcd-ca",
    "etcd-server": "etcd-ca",
    "front-proxy-client": "front-proxy-ca",
    "scheduler.conf": "ca",
    "super-admin.conf": "ca",
}
CERT_HEADER = "CERTIFICATE  EXPIRES  RESIDUAL TIME  CERTIFICATE AUTHORITY  EXTERNALLY MANAGED"
CA_HEADER = "CERTIFICATE AUTHORITY  EXPIRES  RESIDUAL TIME  EXTERNALLY MANAGED"
CHECK_EXPIRATION_CAS = ("ca", "etcd-ca", "front-proxy-ca")


# ---------------------------------------------------------------------------- helpers


def _kubeca(
    *args: str | Path, config: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    argv = [KUBECA, *(["--config", str(config)] if config else []), *map(str, args)]
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stderr == "", result.stderr
    return result.stdout


def _assert_one_line_error(
    result: subprocess.CompletedProcess[str], code: int, *fragments: str
) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kubeca: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def _write_client_config(
    directory: Path,
    server: RunningServer,
    address: str | None = None,
    timeout_seconds: float = 20,
    readable_by_all: bool = False,
) -> Path:
    """A client config as the tests' operator; ``readable_by_all`` copies the operator's
    credentials beside it, world-readable, for a CLI run as another user."""
    directory.mkdir(parents=True, exist_ok=True)
    path = server.client_config(directory / "client.toml", timeout_seconds, address)
    if readable_by_all:
        text = path.read_text()
        for name in ("client.crt", "client.key"):
            copy = directory / name
            shutil.copy(server.credentials_dir / name, copy)
            copy.chmod(0o644)
            text = text.replace(str(server.credentials_dir / name), str(copy))
        ca = directory / "ca.crt"
        shutil.copy(server.service_ca, ca)
        ca.chmod(0o644)
        path.write_text(text.replace(str(server.service_ca), str(ca)))
    return path


def _control_plane_args(root: Path, *extra: str) -> list[str]:
    return [
        "pki",
        "control-plane",
        "--node-name",
        NODE,
        "--advertise-address",
        ADVERTISE,
        "--control-plane-endpoint",
        ENDPOINT,
        "--dir",
        str(root),
        *extra,
    ]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens here once the socket is closed


def _spki(
    holder: x509.Certificate
    | x509.CertificateSigningRequest
    | ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | rsa.RSAPublicKey,
) -> bytes:
    """The DER SubjectPublicKeyInfo of a certificate, CSR, private key or public key."""
    public = holder if isinstance(holder, rsa.RSAPublicKey) else holder.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _key(pem: bytes) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return key


def _cn(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _orgs(name: x509.Name) -> tuple[str, ...]:
    return tuple(str(a.value) for a in name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))


def _eku(cert: x509.Certificate) -> tuple[x509.ObjectIdentifier, ...]:
    return tuple(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _san(obj: x509.Certificate | x509.CertificateSigningRequest) -> x509.SubjectAlternativeName:
    try:
        return obj.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return x509.SubjectAlternativeName([])


def _san_sets(obj: x509.Certificate | x509.CertificateSigningRequest) -> tuple[set[str], set[str]]:
    san = _san(obj)
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    assert len(dns) == len(set(dns)) and len(ips) == len(set(ips)), "duplicate SANs"
    return set(dns), set(ips)


def _openssl_verify(ca: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), str(cert)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


_FIELD = re.compile(r"^\s*(?:- )?([a-z-]+):\s*(.*?)\s*$")


def _kubeconfig_fields(path: Path) -> dict[str, str]:
    """The scalar fields of a one-cluster, one-user kubeconfig, unquoted."""
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = _FIELD.match(line)
        if match and match.group(2):
            value = match.group(2)
            fields.setdefault(match.group(1), json.loads(value) if value[0] == '"' else value)
    return fields


def _kubeconfig_data(path: Path, name: str) -> bytes:
    return base64.b64decode(_kubeconfig_fields(path)[name], validate=True)


def _kubeadm_kubeconfig(
    server: str,
    user: str,
    key_pem: bytes,
    ca_pem: bytes | None = None,
    cert_pem: bytes | None = None,
) -> str:
    """A kubeconfig as kubeadm writes it (sigs.k8s.io/yaml, empty fields omitted)."""
    ca = f"    certificate-authority-data: {base64.b64encode(ca_pem).decode()}\n" if ca_pem else ""
    cert = (
        f"    client-certificate-data: {base64.b64encode(cert_pem).decode()}\n" if cert_pem else ""
    )
    return (
        "apiVersion: v1\nclusters:\n- cluster:\n"
        f"{ca}    server: {server}\n  name: kubernetes\n"
        "contexts:\n- context:\n    cluster: kubernetes\n"
        f"    user: {user}\n  name: {user}@kubernetes\n"
        f"current-context: {user}@kubernetes\nkind: Config\npreferences: {{}}\n"
        f"users:\n- name: {user}\n  user:\n{cert}"
        f"    client-key-data: {base64.b64encode(key_pem).decode()}\n"
    )


@dataclass(frozen=True)
class FileState:
    data: bytes
    mtime_ns: int
    inode: int
    mode: int


def _snapshot(root: Path) -> dict[str, FileState]:
    """Every file and directory under ``root``: bytes, mtime, inode and mode."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.stat()
        data = path.read_bytes() if path.is_file() else b"<dir>"
        state[str(path.relative_to(root))] = FileState(data, st.st_mtime_ns, st.st_ino, st.st_mode)
    return state


def _report_names(names: Sequence[str]) -> list[str]:
    """The names the report uses: kubeadm's (etcd/server is etcd-server), sorted."""
    return sorted(name.replace("/", "-") for name in names)


def _report(stdout: str, verb: str) -> list[str]:
    """The names on the report's `issued`/`unchanged`/`skipped` lines."""
    return [
        line.split(None, 1)[1].split(":")[0]
        for line in stdout.splitlines()
        if line.startswith(verb + " ")
    ]


# ---------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Deployment:
    config: Path  # client config pointing at the server
    cas: dict[str, Path]  # each CA certificate as the server hands it out
    grants_super_admin: bool


@dataclass(frozen=True)
class Layout:
    root: Path
    stdout: str
    deployment: Deployment


@pytest.fixture(scope="module")
def default_deployment(
    server: RunningServer, ca_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Deployment:
    """The session server: super-admin disabled, the secure default."""
    config = _write_client_config(tmp_path_factory.mktemp("default-client"), server)
    return Deployment(config, ca_files, grants_super_admin=False)


@pytest.fixture(scope="module")
def granting_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """A server of its own, on a token of its own, with super-admin explicitly enabled."""
    base = tmp_path_factory.mktemp("granting")
    token: Token = make_token(base / "hsm")
    server_config = write_server_config(
        base / "server", token, extra="[profiles]\nenable_super_admin = true\n"
    )
    run_server_cli(server_config, token, "init")
    running = RunningServer(server_config, token).start()
    try:
        cas = {}
        with running.client() as client:
            for ca in client.ca_certificates():
                cas[ca.authority] = base / f"{ca.authority}.crt"
                cas[ca.authority].write_text(ca.certificate_pem)
        config = _write_client_config(base / "client", running)
        yield Deployment(config, cas, grants_super_admin=True)
    finally:
        running.stop()


def _make_layout(deployment: Deployment, root: Path, *extra: str) -> Layout:
    stdout = _ok(_kubeca(*_control_plane_args(root, *extra), config=deployment.config))
    return Layout(root, stdout, deployment)


@pytest.fixture(scope="module", params=["default-server", "super-admin-granting-server"])
def layout(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """One control-plane layout per kind of server."""
    name = "default" if request.param == "default-server" else "granting"
    deployment: Deployment = request.getfixturevalue(f"{name}_deployment")
    return _make_layout(deployment, tmp_path_factory.mktemp(f"layout-{name}") / "kubernetes")


@pytest.fixture(scope="module")
def full_layout(
    granting_deployment: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> Layout:
    """A control-plane layout with all five kubeconfigs, super-admin.conf included."""
    root = tmp_path_factory.mktemp("full") / "kubernetes"
    return _make_layout(granting_deployment, root)


# ------------------------------------------------------- 1. the External CA layout


def test_each_ca_certificate_is_present_and_its_key_absent(layout: Layout) -> None:
    for authority, base in CA_BASES.items():
        crt = layout.root / "pki" / f"{base}.crt"
        assert crt.read_bytes() == layout.deployment.cas[authority].read_bytes(), crt
        assert not (layout.root / "pki" / f"{base}.key").exists()
    assert not list(layout.root.rglob("*ca.key"))


def test_every_leaf_each_external_ca_requires_is_present_with_its_key(layout: Layout) -> None:
    for bases in REQUIRED_LEAVES.values():
        for base in bases:
            crt, key = layout.root / "pki" / f"{base}.crt", layout.root / "pki" / f"{base}.key"
            assert crt.is_file() and key.is_file(), base
            assert _spki(_cert(crt)) == _spki(_key(key.read_bytes())), f"{base}: key mismatch"


@pytest.mark.parametrize("base", LEAVES)
def test_leaf_verifies_against_its_own_ca_and_neither_other(layout: Layout, base: str) -> None:
    cert = layout.root / "pki" / f"{base}.crt"
    for authority, ca_base in CA_BASES.items():
        result = _openssl_verify(layout.root / "pki" / f"{ca_base}.crt", cert)
        if authority == LEAF_CA[base]:
            assert result.returncode == 0, result.stdout + result.stderr
            assert f"{cert}: OK" in result.stdout
        else:
            assert result.returncode != 0, f"{base} verified against {authority}"


def test_sa_pub_holds_the_keys_the_service_publishes_and_there_is_no_sa_key(
    layout: Layout,
) -> None:
    assert not (layout.root / "pki" / "sa.key").exists()
    pub_pem = (layout.root / "pki" / "sa.pub").read_bytes()
    assert pub_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    public = serialization.load_pem_public_key(pub_pem)
    # kubeadm's kind of key, made in the HSM: RSA-2048 by default.
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    config = load_client_config(layout.deployment.config)
    with Client.from_config(config) as client:
        published = client.service_account_keys()
    assert [k.public_der for k in published] == [_spki(public)]


def test_the_kubeadm_patch_swaps_the_key_files_for_the_signing_endpoint(layout: Layout) -> None:
    ops = json.loads((layout.root / "kubeca-patches" / "kube-apiserver0+json.json").read_text())
    pki = layout.root / "pki"
    tests = [op["value"] for op in ops if op["op"] == "test"]
    assert tests == [
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-account-key-file={pki / 'sa.pub'}",
    ]
    removed = [op["path"] for op in ops if op["op"] == "remove"]
    tested = [op["path"] for op in ops if op["op"] == "test"]
    assert removed == tested  # each removal is of the flag its test names
    added = [op["value"] for op in ops if op["op"] == "add"]
    assert "--service-account-signing-endpoint=/run/kubeca/signer.sock" in added
    assert {"name": "kubeca-signer", "mountPath": "/run/kubeca"} in added
    assert "kube-controller-manager: remove --service-account-private-key-file" in layout.stdout


def test_the_layout_holds_no_private_key_but_the_leaves(layout: Layout) -> None:
    leaf_keys = {layout.root / "pki" / f"{base}.key" for base in LEAVES}
    kubeconfigs = set(layout.root.glob("*.conf"))  # each embeds its client's own key
    holding = {
        p for p in layout.root.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()
    }
    embedded = {p for p in holding if p.suffix == ".conf"}
    assert holding - embedded <= leaf_keys
    assert embedded <= kubeconfigs
    assert not (layout.root / "pki" / "sa.key").exists()


def test_local_sa_key_writes_a_matching_rsa_pair_with_a_warning(
    default_deployment: Deployment, tmp_path: Path
) -> None:
    root = tmp_path / "kubernetes"
    result = _kubeca(*_control_plane_args(root, "--local-sa-key"), config=default_deployment.config)
    assert result.returncode == 0, result.stderr
    assert "older than 1.32" in result.stderr and "Traceback" not in result.stderr
    key_pem = (root / "pki" / "sa.key").read_bytes()
    pub_pem = (root / "pki" / "sa.pub").read_bytes()
    # kubeadm writes PKCS#1 ("RSA PRIVATE KEY") and reads PKCS#8 too.
    assert key_pem.startswith((b"-----BEGIN RSA PRIVATE KEY-----", b"-----BEGIN PRIVATE KEY-----"))
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    public = serialization.load_pem_public_key(pub_pem)
    assert isinstance(public, rsa.RSAPublicKey)
    assert _spki(public) == _spki(key)
    assert not (root / "kubeca-patches").exists()


def test_super_admin_conf_only_from_a_server_that_grants_it(layout: Layout) -> None:
    super_admin = layout.root / "super-admin.conf"
    skipped = [line for line in layout.stdout.splitlines() if line.startswith("skipped")]
    if layout.deployment.grants_super_admin:
        assert super_admin.is_file()
        assert skipped == []
    else:
        assert not super_admin.exists()
        # The report says which file is missing and why, in one line.
        assert len(skipped) == 1, layout.stdout
        assert "super-admin.conf" in skipped[0]
        assert "does not grant the super-admin profile" in skipped[0], skipped[0]


@pytest.mark.parametrize("name", KUBECONFIGS)
def test_kubeconfig_embeds_the_kubernetes_ca_and_points_at_kubeadms_server(
    layout: Layout, name: str
) -> None:
    path = layout.root / name
    if name == "super-admin.conf" and not layout.deployment.grants_super_admin:
        assert not path.exists()  # reported as skipped: see the test above
        return
    expected = KUBECONFIGS[name]
    text = path.read_text()
    assert text.count("- cluster:") == text.count("- context:") == text.count("- name:") == 1
    fields = _kubeconfig_fields(path)
    assert fields["server"] == expected.server
    ca_pem = _kubeconfig_data(path, "certificate-authority-data")
    assert ca_pem == (layout.root / "pki" / "ca.crt").read_bytes()
    assert ca_pem == layout.deployment.cas["kubernetes-ca"].read_bytes()
    cert = x509.load_pem_x509_certificate(_kubeconfig_data(path, "client-certificate-data"))
    key = _key(_kubeconfig_data(path, "client-key-data"))
    assert _spki(cert) == _spki(key)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    assert (_cn(cert.subject), _orgs(cert.subject)) == (expected.cn, expected.orgs)
    assert _eku(cert) == (CLIENT_AUTH,)


# ---------------------------------------------------------------- 2. permissions


def test_every_key_and_kubeconfig_is_0600(layout: Layout) -> None:
    private = [p for p in layout.root.rglob("*") if p.suffix in (".key", ".conf")]
    # No sa.key: the service-account key is in kubeca's HSM.
    expected_count = len(LEAVES) + len(KUBECONFIGS) - (not layout.deployment.grants_super_admin)
    assert len(private) == expected_count, sorted(map(str, private))
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_pki_directories_are_0700(layout: Layout) -> None:
    for directory in (layout.root / "pki", layout.root / "pki" / "etcd"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_no_temporary_files_are_left(layout: Layout) -> None:
    hidden = [p.relative_to(layout.root) for p in layout.root.rglob(".*")]
    assert hidden == [Path(".kubeca-layout.json")]
    assert not [p for p in layout.root.rglob("*") if p.name.endswith((".tmp", "~"))]


def test_worker_layout_is_the_kubelet_kubeconfig_and_serving_pair(
    default_deployment: Deployment, tmp_path: Path
) -> None:
    root = tmp_path / "kubernetes"
    argv = ("pki", "worker", "--node-name", "worker-1", "--address", "10.0.0.21")
    _ok(
        _kubeca(
            *argv,
            "--control-plane-endpoint",
            ENDPOINT,
            "--dir",
            root,
            config=default_deployment.config,
        )
    )
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert files == {
        ".kubeca-layout.json",
        "kubelet.conf",
        "pki/ca.crt",
        "pki/kubelet.crt",
        "pki/kubelet.key",
    }
    ca_pem = default_deployment.cas["kubernetes-ca"].read_bytes()
    assert (root / "pki" / "ca.crt").read_bytes() == ca_pem
    conf = root / "kubelet.conf"
    assert _kubeconfig_fields(conf)["server"] == ENDPOINT_URL
    assert _kubeconfig_data(conf, "certificate-authority-data") == ca_pem
    client = x509.load_pem_x509_certificate(_kubeconfig_data(conf, "client-certificate-data"))
    assert (_cn(client.subject), _orgs(client.subject)) == (
        "system:node:worker-1",
        ("system:nodes",),
    )
    assert _spki(client) == _spki(_key(_kubeconfig_data(conf, "client-key-data")))
    serving = _cert(root / "pki" / "kubelet.crt")
    assert _spki(serving) == _spki(_key((root / "pki" / "kubelet.key").read_bytes()))
    assert _eku(serving) == (SERVER_AUTH,)
    assert _san_sets(serving) == ({"worker-1"}, {"10.0.0.21"})
    assert _openssl_verify(root / "pki" / "ca.crt", root / "pki" / "kubelet.crt").returncode == 0
    for private in (conf, root / "pki" / "kubelet.key"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    assert stat.S_IMODE((root / "pki").stat().st_mode) == 0o700


# ------------------------------------------------------------------ 3. idempotence


def test_rerun_on_a_complete_layout_changes_nothing(
    default_deployment: Deployment, tmp_path: Path
) -> None:
    root = tmp_path / "kubernetes"
    _make_layout(default_deployment, root)
    before = _snapshot(root)
    again = _make_layout(default_deployment, root)
    assert _snapshot(root) == before
    assert "nothing changed" in again.stdout.splitlines()[-1]
    assert _report(again.stdout, "issued") == []


def test_an_extra_apiserver_san_reissues_only_the_apiserver_certificate(
    default_deployment: Deployment, tmp_path: Path
) -> None:
    root = tmp_path / "kubernetes"
    _make_layout(default_deployment, root)
    before = _snapshot(root)
    changed = _make_layout(default_deployment, root, "--apiserver-cert-sans", "api.example.com")
    assert _report(changed.stdout, "issued") == ["apiserver"]
    after = _snapshot(root)
    assert after["pki/apiserver.crt"].data != before["pki/apiserver.crt"].data
    dns, _ = _san_sets(_cert(root / "pki" / "apiserver.crt"))
    assert "api.example.com" in dns
    # pki/ itself too: its mtime moves when a file in it is replaced.
    touched = {"pki", "pki/apiserver.crt", "pki/apiserver.key", ".kubeca-layout.json"}
    assert {k: v for k, v in after.items() if k not in touched} == {
        k: v for k, v in before.items() if k not in touched
    }
    # The new input is now the recorded one: a third run changes nothing.
    third = _make_layout(default_deployment, root, "--apiserver-cert-sans", "api.example.com")
    assert "nothing changed" in third.stdout
    assert _snapshot(root) == after


def test_a_new_control_plane_endpoint_reissues_what_names_it(
    default_deployment: Deployment, tmp_path: Path
) -> None:
    root = tmp_path / "kubernetes"
    _make_layout(default_deployment, root)
    before = _snapshot(root)
    argv = _control_plane_args(root)
    argv[argv.index("--control-plane-endpoint") + 1] = "k8s2.example.internal:8443"
    changed = _ok(_kubeca(*argv, config=default_deployment.config))
    # The apiserver's SANs hold the endpoint host; these kubeconfigs hold its URL.
    assert sorted(_report(changed, "issued")) == ["admin.conf", "apiserver", "kubelet.conf"]
    assert "k8s2.example.internal" in _san_sets(_cert(root / "pki" / "apiserver.crt"))[0]
    for name in ("admin.conf", "kubelet.conf"):
        assert _kubeconfig_fields(root / name)["server"] == "https://k8s2.example.internal:8443"
    for name in ("controller-manager.conf", "scheduler.conf"):
        assert _kubeconfig_fields(root / name)["server"] == LOCAL_URL
    after = _snapshot(root)
    touched = {"pki", "pki/apiserver.crt", "pki/apiserver.key", ".kubeca-layout.json"}
    touched |= {"admin.conf", "kubelet.conf"}
    assert {k: v for k, v in after.items() if k not in touched} == {
        k: v for k, v in before.items() if k not in touched
    }


# ------------------------------------------------------ 4. failure leaves nothing


def test_unreachable_server_fails_fast_with_exit_69_and_writes_nothing(
    server: RunningServer, tmp_path: Path
) -> None:
    config = _write_client_config(
        tmp_path / "client", server, f"127.0.0.1:{_closed_port()}", timeout_seconds=2
    )
    root = tmp_path / "kubernetes"
    started = time.monotonic()
    result = _kubeca(*_control_plane_args(root), config=config, timeout=30)
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"took {elapsed:.1f}s"
    _assert_one_line_error(result, 69, "unavailable")
    assert not root.exists() or list(root.iterdir()) == []


def test_a_refusal_by_the_server_writes_nothing_into_a_new_dir(
    default_deployment: Deployment, tmp_path: Path
) -> None:
    root = tmp_path / "kubernetes"
    # The server's minimum lifetime is 10 minutes: it refuses every one of these.
    result = _kubeca(
        *_control_plane_args(root, "--lifetime", "5m"), config=default_deployment.config
    )
    assert result.returncode != 0
    _assert_one_line_error(result, result.returncode, "nothing was written", "below the minimum")
    assert result.stdout == ""
    assert not root.exists() or list(root.iterdir()) == []


def test_a_refusal_by_the_server_leaves_an_existing_layout_untouched(
    default_deployment: Deployment, tmp_path: Path
) -> None:
    root = tmp_path / "kubernetes"
    _make_layout(default_deployment, root)
    before = _snapshot(root)
    result = _kubeca(
        *_control_plane_args(root, "--lifetime", "5m"), config=default_deployment.config
    )
    assert result.returncode != 0
    _assert_one_line_error(result, result.returncode, "nothing was written")
    assert _snapshot(root) == before


BAD_INPUTS = {
    "node-name": ("--node-name", "Bad_Name"),
    "advertise-address": ("--advertise-address", "1.2.3.400"),
    "service-cidr": ("--service-cidr", "10.96.0.0/33"),
    "service-cidr-host-bits": ("--service-cidr", "10.96.0.1/12"),
    "apiserver-cert-sans": ("--apiserver-cert-sans", "api.example.com,bad_name!"),
    "etcd-sans": ("--etcd-sans", "etcd_1.example.com"),
    "control-plane-endpoint": ("--control-plane-endpoint", "k8s.example.internal:99999"),
}


@pytest.mark.parametrize("flag_value", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_error_line_exit_2_and_no_files(
    default_deployment: Deployment, tmp_path: Path, flag_value: tuple[str, str]
) -> None:
    flag, value = flag_value
    root = tmp_path / "kubernetes"
    argv = _control_plane_args(root)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    result = _kubeca(*argv, config=default_deployment.config)
    _assert_one_line_error(result, 2, flag, value.split(",")[-1])
    assert result.stdout == ""
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []


def test_dir_that_is_a_regular_file_is_refused(
    default_deployment: Deployment, tmp_path: Path
) -> None:
    root = tmp_path / "kubernetes"
    root.write_text("not a directory\n")
    result = _kubeca(*_control_plane_args(root), config=default_deployment.config)
    _assert_one_line_error(result, 2, str(root), "not a directory")
    assert root.read_text() == "not a directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kubernetes"]


@pytest.mark.parametrize("ca_key", ["pki/ca.key", "pki/etcd/ca.key", "pki/front-proxy-ca.key"])
def test_dir_holding_a_ca_key_is_refused_naming_that_file(
    default_deployment: Deployment, tmp_path: Path, ca_key: str
) -> None:
    root = tmp_path / "kubernetes"
    key = root / ca_key
    key.parent.mkdir(parents=True)
    key.write_text("a CA key kubeadm would use instead of the external CA\n")
    before = _snapshot(root)
    result = _kubeca(*_control_plane_args(root), config=default_deployment.config)
    _assert_one_line_error(result, 2, str(key))
    assert _snapshot(root) == before


def _nobody_kubeca() -> list[str]:
    """argv that runs the kubeca CLI as user nobody, or skip saying why it cannot."""
    runuser = shutil.which("runuser")
    if os.geteuid() != 0 or runuser is None:
        pytest.skip("switching to user nobody needs root and runuser")
    as_nobody = [runuser, "-u", "nobody", "--"]
    candidates = [[*as_nobody, KUBECA]]
    # The venv's interpreter may sit where nobody cannot reach it (e.g. under /root):
    # then run the same sources with a system Python of the same version.
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    path = f"PYTHONPATH={sysconfig.get_paths()['purelib']}:{REPO / 'client'}"
    for python in (f"/usr/bin/{version}", f"/usr/local/bin/{version}", shutil.which(version)):
        if python and Path(python).exists():
            candidates.append([*as_nobody, "env", path, python, "-m", "kubeca_client.cli"])
    problems = []
    for argv in candidates:
        probe = subprocess.run(
            [*argv, "--help"], capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return argv
        last = probe.stderr.strip().splitlines()[-1:]
        problems.append(last[0] if last else f"exit {probe.returncode}")
    pytest.skip(f"user nobody cannot run the kubeca CLI here: {problems}")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A root-owned 0755 directory outside pytest's private (0700) temp tree."""
    directory = Path(tempfile.mkdtemp(prefix="kubeca-nobody-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


@pytest.mark.parametrize("exists", [True, False], ids=["existing-dir", "dir-to-create"])
def test_dir_the_user_cannot_write_is_refused_before_anything_is_issued(
    server: RunningServer, shared_dir: Path, exists: bool
) -> None:
    argv = _nobody_kubeca()
    config = _write_client_config(shared_dir, server, readable_by_all=True)
    config.chmod(0o644)
    root = shared_dir / "kubernetes" if exists else shared_dir / "locked" / "kubernetes"
    root.parent.mkdir(exist_ok=True, mode=0o755)
    if exists:
        root.mkdir(mode=0o755)
    audit_before = server.audit_log.read_bytes() if server.audit_log.exists() else b""
    result = subprocess.run(
        [*argv, "--config", str(config), *_control_plane_args(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _assert_one_line_error(result, 2, str(root), "not writable")
    assert result.stdout == ""
    assert not root.exists() or list(root.iterdir()) == []
    # Refused before asking the server for anything: no issuance was audited.
    assert (server.audit_log.read_bytes() if server.audit_log.exists() else b"") == audit_before


# --------------------------------------------------------------- 5. check-expiration


def _columns(line: str) -> list[str]:
    return re.split(r" {2,}", line.strip())


@dataclass(frozen=True)
class Tables:
    certificates: list[list[str]]
    authorities: list[list[str]]
    missing: list[str]


def _tables(stdout: str) -> Tables:
    """kubeadm's two tables; columns are separated by two or more spaces."""
    lines = stdout.splitlines()
    assert re.sub(r" {2,}", "  ", lines[0].rstrip()) == CERT_HEADER, lines[0]
    split = lines.index("")
    assert re.sub(r" {2,}", "  ", lines[split + 1].rstrip()) == CA_HEADER, lines[split + 1]
    body = lines[1:split]
    missing = [line.removeprefix("!MISSING! ") for line in body if line.startswith("!MISSING!")]
    rows = [_columns(line) for line in body if not line.startswith("!MISSING!")]
    authorities = [_columns(line) for line in lines[split + 2 :] if line.strip()]
    assert all(len(r) == 5 for r in rows), rows
    assert all(len(r) == 4 for r in authorities), authorities
    return Tables(rows, authorities, missing)


def _check_expiration(root: Path, *extra: str) -> str:
    # Offline: no --config, no server.
    return _ok(_kubeca("check-expiration", "--dir", root, *extra))


def _expires(text: str) -> datetime:
    return datetime.strptime(text, "%b %d, %Y %H:%M UTC").replace(tzinfo=UTC)


def test_check_expiration_prints_kubeadms_two_tables(full_layout: Layout) -> None:
    tables = _tables(_check_expiration(full_layout.root))
    assert tables.missing == []
    assert [r[0] for r in tables.certificates] == list(CHECK_EXPIRATION)
    for name, expires, residual, authority, external in tables.certificates:
        assert residual == "364d", name
        assert authority == CHECK_EXPIRATION[name], name
        assert external == "yes", name
        assert _expires(expires) - datetime.now(UTC) > timedelta(days=364)
    assert [r[0] for r in tables.authorities] == list(CHECK_EXPIRATION_CAS)
    for name, expires, residual, external in tables.authorities:
        assert (residual, external) == ("9y", "yes"), name
        ca_base = {"ca": "ca", "etcd-ca": "etcd/ca", "front-proxy-ca": "front-proxy-ca"}[name]
        not_after = _cert(full_layout.root / "pki" / f"{ca_base}.crt").not_valid_after_utc
        assert _expires(expires) == not_after.replace(second=0, microsecond=0)


def test_check_expiration_json_has_residual_seconds(full_layout: Layout) -> None:
    report = json.loads(_check_expiration(full_layout.root, "-o", "json"))
    rows = {r["name"]: r for r in report["certificates"]}
    assert list(rows) == list(CHECK_EXPIRATION)
    apiserver = _cert(full_layout.root / "pki" / "apiserver.crt")
    left = (apiserver.not_valid_after_utc - datetime.now(UTC)).total_seconds()
    assert abs(rows["apiserver"]["residual_seconds"] - left) < 60
    for name, row in rows.items():
        assert isinstance(row["residual_seconds"], int), name
        assert 364 * 86400 < row["residual_seconds"] <= 365 * 86400, name
        assert row["externally_managed"] is True, name
        assert row["missing"] is False, name
    authorities = [a["name"] for a in report["certificate_authorities"]]
    assert authorities == list(CHECK_EXPIRATION_CAS)
    for ca in report["certificate_authorities"]:
        assert 9 * 365 * 86400 < ca["residual_seconds"] <= 3650 * 86400


def test_check_expiration_names_a_missing_certificate(full_layout: Layout, tmp_path: Path) -> None:
    root = tmp_path / "kubernetes"
    shutil.copytree(full_layout.root, root)
    (root / "pki" / "etcd" / "peer.crt").unlink()
    tables = _tables(_check_expiration(root))
    assert tables.missing == ["etcd-peer"]
    assert "!MISSING! etcd-peer" in _check_expiration(root).splitlines()
    assert [r[0] for r in tables.certificates] == [n for n in CHECK_EXPIRATION if n != "etcd-peer"]


def test_check_expiration_shows_super_admin_missing_from_a_default_server_layout(
    default_deployment: Deployment, tmp_path: Path
) -> None:
    root = tmp_path / "kubernetes"
    _make_layout(default_deployment, root)
    assert _tables(_check_expiration(root)).missing == ["super-admin.conf"]


def _name(cn: str, orgs: Sequence[str] = ()) -> x509.Name:
    # Go's pkix.Name order, as kubeadm's certificates and CSRs carry it: O before CN.
    return x509.Name(
        [
            *(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass(frozen=True)
class LocalCA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _local_ca(cn: str) -> LocalCA:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return LocalCA(cert, key)


def _local_leaf(ca: LocalCA, cn: str, orgs: Sequence[str] = ()) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, orgs))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca.key, hashes.SHA256())
    )
    return _pem_cert(cert), _pem_key(key)


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _write_kubeadm_made_layout(root: Path) -> None:
    """What plain `kubeadm init` leaves: every CA's key on disk, leaves signed locally."""
    (root / "pki" / "etcd").mkdir(parents=True)
    cas = {}
    for authority, base in CA_BASES.items():
        cas[authority] = _local_ca({"kubernetes-ca": "kubernetes"}.get(authority, authority))
        (root / "pki" / f"{base}.crt").write_bytes(_pem_cert(cas[authority].cert))
        (root / "pki" / f"{base}.key").write_bytes(_pem_key(cas[authority].key))
    for base, authority in LEAF_CA.items():
        cert, key = _local_leaf(cas[authority], f"kubeadm-{base.replace('/', '-')}")
        (root / "pki" / f"{base}.crt").write_bytes(cert)
        (root / "pki" / f"{base}.key").write_bytes(key)
    kubernetes_ca = cas["kubernetes-ca"]
    for name, identity in KUBECONFIGS.items():
        cert, key = _local_leaf(kubernetes_ca, identity.cn, identity.orgs)
        text = _kubeadm_kubeconfig(
            identity.server, identity.cn, key, _pem_cert(kubernetes_ca.cert), cert
        )
        (root / name).write_text(text)


def test_check_expiration_on_a_kubeadm_made_layout_says_not_externally_managed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "kubernetes"
    _write_kubeadm_made_layout(root)
    tables = _tables(_check_expiration(root))
    assert tables.missing == []
    assert [r[0] for r in tables.certificates] == list(CHECK_EXPIRATION)
    assert {r[4] for r in tables.certificates} == {"no"}
    assert [r[3] for r in tables.certificates] == list(CHECK_EXPIRATION.values())
    assert [r[0] for r in tables.authorities] == list(CHECK_EXPIRATION_CAS)
    assert {r[3] for r in tables.authorities} == {"no"}


# ------------------------------------------------------------------------- 6. renew


@pytest.fixture
def short_layout(default_deployment: Deployment, tmp_path: Path) -> Layout:
    """A control-plane layout whose every certificate was asked for with a 15m lifetime."""
    return _make_layout(default_deployment, tmp_path / "kubernetes", "--lifetime", "15m")


def _certs_and_keys(root: Path) -> dict[str, tuple[x509.Certificate, bytes]]:
    """Every certificate of the layout with its key's PEM, by name."""
    found = {}
    for base in LEAVES:
        found[base] = (
            _cert(root / "pki" / f"{base}.crt"),
            (root / "pki" / f"{base}.key").read_bytes(),
        )
    for name in KUBECONFIGS:
        if (root / name).exists():
            cert_pem = _kubeconfig_data(root / name, "client-certificate-data")
            key_pem = _kubeconfig_data(root / name, "client-key-data")
            found[name] = (x509.load_pem_x509_certificate(cert_pem), key_pem)
    return found


def _authority_cert(root: Path, name: str) -> x509.Certificate:
    authority = LEAF_CA.get(name, "kubernetes-ca")
    return _cert(root / "pki" / f"{CA_BASES[authority]}.crt")


def test_check_expiration_after_a_15m_issue_shows_minutes(short_layout: Layout) -> None:
    tables = _tables(_check_expiration(short_layout.root))
    assert tables.missing == ["super-admin.conf"]  # the default server does not grant it
    assert {r[2] for r in tables.certificates} <= {"14m", "15m"}, tables.certificates


def test_renew_with_the_default_window_leaves_a_fresh_layout_unchanged(
    short_layout: Layout,
) -> None:
    before = _snapshot(short_layout.root)
    stdout = _ok(
        _kubeca("renew", "--dir", short_layout.root, config=short_layout.deployment.config)
    )
    assert "nothing changed" in stdout
    assert _report(stdout, "issued") == []
    assert _snapshot(short_layout.root) == before


def _assert_renewed(root: Path, before: dict[str, tuple[x509.Certificate, bytes]]) -> None:
    """Same subject, SANs, lifetime and CA as before; a new certificate for the key on disk."""
    after = _certs_and_keys(root)
    assert set(after) == set(before)
    now = datetime.now(UTC)
    for name, (cert, key_pem) in after.items():
        old = before[name][0]
        assert cert.serial_number != old.serial_number, name
        assert cert.subject == old.subject, name
        assert _san(cert) == _san(old), name
        assert _eku(cert) == _eku(old), name
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert life == old.not_valid_after_utc - old.not_valid_before_utc, name
        assert timedelta(minutes=14) < cert.not_valid_after_utc - now <= timedelta(minutes=15)
        cert.verify_directly_issued_by(_authority_cert(root, name))
        assert _spki(cert) == _spki(_key(key_pem)), name


def test_renew_within_1h_reissues_every_certificate_with_new_keys(short_layout: Layout) -> None:
    root = short_layout.root
    before = _certs_and_keys(root)
    stdout = _ok(
        _kubeca("renew", "--dir", root, "--within", "1h", config=short_layout.deployment.config)
    )
    assert sorted(_report(stdout, "issued")) == _report_names(list(before))
    _assert_renewed(root, before)
    after = _certs_and_keys(root)
    for name, (_, key_pem) in after.items():
        assert key_pem != before[name][1], f"{name}: the key was kept"
    for base in LEAVES:
        assert stat.S_IMODE((root / "pki" / f"{base}.key").stat().st_mode) == 0o600


def test_renew_reuse_key_keeps_every_key_and_changes_every_certificate(
    short_layout: Layout,
) -> None:
    root = short_layout.root
    before = _certs_and_keys(root)
    key_files = {base: (root / "pki" / f"{base}.key").read_bytes() for base in LEAVES}
    argv = ("renew", "--dir", root, "--within", "1h", "--reuse-key")
    stdout = _ok(_kubeca(*argv, config=short_layout.deployment.config))
    assert sorted(_report(stdout, "issued")) == _report_names(list(before))
    _assert_renewed(root, before)
    after = _certs_and_keys(root)
    for name, (cert, key_pem) in after.items():
        assert key_pem == before[name][1], f"{name}: the key changed"
        assert cert.public_bytes(serialization.Encoding.DER) != before[name][0].public_bytes(
            serialization.Encoding.DER
        )
    assert {base: (root / "pki" / f"{base}.key").read_bytes() for base in LEAVES} == key_files


# ---------------------------------------------------------------------- 7. sign-csrs


@dataclass(frozen=True)
class KubeadmCSR:
    cn: str
    orgs: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()


APISERVER_DNS = (
    NODE,
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
ETCD_DNS = (NODE, "localhost")
ETCD_IPS = (ADVERTISE, "127.0.0.1", "::1")
# As kubeadm computes them for a cluster with controlPlaneEndpoint k8s.example.internal,
# apiServer.certSANs [api.example.com, 10.0.0.100] and etcd peerCertSANs
# [etcd-peer.example.com]: names beyond the profiles' defaults, which only the CSRs carry.
LEAF_CSRS = {
    "apiserver": KubeadmCSR(
        "kube-apiserver",
        dns=(*APISERVER_DNS, "k8s.example.internal", "api.example.com"),
        ips=("10.96.0.1", ADVERTISE, "10.0.0.100"),
    ),
    "apiserver-kubelet-client": KubeadmCSR(
        "kube-apiserver-kubelet-client", ("kubeadm:cluster-admins",)
    ),
    "apiserver-etcd-client": KubeadmCSR("kube-apiserver-etcd-client"),
    "front-proxy-client": KubeadmCSR("front-proxy-client"),
    "etcd/server": KubeadmCSR(NODE, dns=ETCD_DNS, ips=ETCD_IPS),
    "etcd/peer": KubeadmCSR(NODE, dns=(*ETCD_DNS, "etcd-peer.example.com"), ips=ETCD_IPS),
    "etcd/healthcheck-client": KubeadmCSR("kube-etcd-healthcheck-client"),
}
LEAF_EKU = {
    "apiserver": (SERVER_AUTH,),
    "apiserver-kubelet-client": (CLIENT_AUTH,),
    "apiserver-etcd-client": (CLIENT_AUTH,),
    "front-proxy-client": (CLIENT_AUTH,),
    "etcd/server": (SERVER_AUTH, CLIENT_AUTH),
    "etcd/peer": (SERVER_AUTH, CLIENT_AUTH),
    "etcd/healthcheck-client": (CLIENT_AUTH,),
}


def _kubeadm_csr(spec: KubeadmCSR, key: rsa.RSAPrivateKey) -> bytes:
    """A CSR as kubeadm's pkiutil.NewCSR makes it: subject and SANs, no usages."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(spec.cn, spec.orgs))
    if spec.dns or spec.ips:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in spec.ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _write_generate_csr_output(root: Path) -> None:
    """What `kubeadm certs generate-csr` leaves (RSA-2048 keys, kubeadm's default)."""
    (root / "pki" / "etcd").mkdir(parents=True)
    for base, spec in LEAF_CSRS.items():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (root / "pki" / f"{base}.key").write_bytes(_pem_key(key))
        (root / "pki" / f"{base}.csr").write_bytes(_kubeadm_csr(spec, key))
    for name, identity in KUBECONFIGS.items():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        text = _kubeadm_kubeconfig(identity.server, identity.cn, _pem_key(key))
        (root / name).write_text(text)
        (root / f"{name}.csr").write_bytes(
            _kubeadm_csr(KubeadmCSR(identity.cn, identity.orgs), key)
        )


@dataclass(frozen=True)
class SignedCSRs:
    root: Path
    before: dict[str, FileState]
    stdout: str
    deployment: Deployment


@pytest.fixture(scope="module")
def signed(granting_deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> SignedCSRs:
    root = tmp_path_factory.mktemp("generate-csr") / "kubernetes"
    _write_generate_csr_output(root)
    before = _snapshot(root)
    stdout = _ok(_kubeca("sign-csrs", "--dir", root, config=granting_deployment.config))
    return SignedCSRs(root, before, stdout, granting_deployment)


def test_generated_csrs_are_kubeadms_subject_and_sans_only(signed: SignedCSRs) -> None:
    paths = list(signed.root.rglob("*.csr"))
    assert len(paths) == len(LEAF_CSRS) + len(KUBECONFIGS)
    for path in paths:
        csr = x509.load_pem_x509_csr(path.read_bytes())
        assert csr.is_signature_valid
        assert {type(e.value) for e in csr.extensions} <= {x509.SubjectAlternativeName}, path


@pytest.mark.parametrize("base", LEAVES)
def test_sign_csrs_writes_each_leaf_certificate_for_its_csr(signed: SignedCSRs, base: str) -> None:
    csr = x509.load_pem_x509_csr((signed.root / "pki" / f"{base}.csr").read_bytes())
    crt = signed.root / "pki" / f"{base}.crt"
    cert = _cert(crt)
    assert _spki(cert) == _spki(csr)
    assert cert.subject == csr.subject
    assert _san_sets(cert) == _san_sets(csr)
    assert _eku(cert) == LEAF_EKU[base]
    ca = signed.deployment.cas[LEAF_CA[base]]
    assert _openssl_verify(ca, crt).returncode == 0
    for other, path in signed.deployment.cas.items():
        if other != LEAF_CA[base]:
            assert _openssl_verify(path, crt).returncode != 0, f"{base} verified against {other}"


@pytest.mark.parametrize("name", KUBECONFIGS)
def test_sign_csrs_fills_each_kubeconfig_and_keeps_its_key(signed: SignedCSRs, name: str) -> None:
    path = signed.root / name
    csr = x509.load_pem_x509_csr((signed.root / f"{name}.csr").read_bytes())
    fields = _kubeconfig_fields(path)
    assert fields["server"] == KUBECONFIGS[name].server
    ca_pem = _kubeconfig_data(path, "certificate-authority-data")
    assert ca_pem == signed.deployment.cas["kubernetes-ca"].read_bytes()
    cert = x509.load_pem_x509_certificate(_kubeconfig_data(path, "client-certificate-data"))
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    assert _spki(cert) == _spki(csr)
    assert cert.subject == csr.subject
    assert _eku(cert) == (CLIENT_AUTH,)
    original_key = _kubeconfig_data_from(signed.before[name].data, "client-key-data")
    assert _kubeconfig_data(path, "client-key-data") == original_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _kubeconfig_data_from(text: bytes, field: str) -> bytes:
    match = re.search(rf"^\s*{field}: (\S+)$", text.decode(), re.MULTILINE)
    assert match, field
    return base64.b64decode(match.group(1), validate=True)


def test_sign_csrs_leaves_every_key_byte_identical(signed: SignedCSRs) -> None:
    keys = [k for k in signed.before if k.endswith(".key")]
    assert len(keys) == len(LEAVES)
    after = _snapshot(signed.root)
    for key in keys:
        assert after[key] == signed.before[key], key
    # No key appeared that kubeadm did not make (sign-csrs never generates one).
    assert sorted(k for k in after if k.endswith(".key")) == sorted(keys)
    assert sorted(_report(signed.stdout, "issued")) == _report_names([*LEAVES, *KUBECONFIGS])


def test_sign_csrs_accepts_the_pki_directory_itself(
    granting_deployment: Deployment, tmp_path: Path
) -> None:
    # `kubeadm certs generate-csr --cert-dir /etc/kubernetes/pki` users pass that.
    root = tmp_path / "kubernetes"
    _write_generate_csr_output(root)
    stdout = _ok(_kubeca("sign-csrs", "--dir", root / "pki", config=granting_deployment.config))
    for base in LEAVES:
        cert = _cert(root / "pki" / f"{base}.crt")
        csr = x509.load_pem_x509_csr((root / "pki" / f"{base}.csr").read_bytes())
        assert _spki(cert) == _spki(csr), base
    for name in KUBECONFIGS:
        assert _kubeconfig_data(root / name, "client-certificate-data"), name
    assert not (root / "pki" / "pki").exists()
    assert sorted(_report(stdout, "issued")) == _report_names([*LEAVES, *KUBECONFIGS])


def test_sign_csrs_refuses_a_cert_dir_not_named_pki(
    default_deployment: Deployment, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (certs / "apiserver.key").write_bytes(_pem_key(key))
    (certs / "apiserver.csr").write_bytes(_kubeadm_csr(LEAF_CSRS["apiserver"], key))
    result = _kubeca("sign-csrs", "--dir", certs, config=default_deployment.config)
    _assert_one_line_error(result, 2, str(certs), "named pki")
    assert sorted(p.name for p in certs.iterdir()) == ["apiserver.csr", "apiserver.key"]


def test_sign_csrs_refuses_a_csr_not_made_from_the_key_beside_it(
    default_deployment: Deployment, tmp_path: Path
) -> None:
    root = tmp_path / "kubernetes"
    (root / "pki").mkdir(parents=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (root / "pki" / "apiserver.key").write_bytes(_pem_key(key))
    (root / "pki" / "apiserver.csr").write_bytes(_kubeadm_csr(LEAF_CSRS["apiserver"], other))
    before = _snapshot(root)
    result = _kubeca("sign-csrs", "--dir", root, config=default_deployment.config)
    _assert_one_line_error(result, 2, str(root / "pki" / "apiserver.csr"), "key")
    assert _snapshot(root) == before
