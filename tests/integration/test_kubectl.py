"""The kubeconfigs and the apiserver certificate `kubeca pki` writes, used by real clients.

kubectl loads every kubeconfig and authenticates with it to a TLS endpoint on loopback
that serves the issued apiserver certificate and, like kube-apiserver's
--client-ca-file, accepts client certificates from kubernetes-ca only. Python's ssl
then checks the apiserver certificate against every name in its SANs.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from tests.support import BIN, RunningServer, make_token, run_server_cli, write_server_config
from tests.tls_endpoint import TLSEndpoint, client_context, https_get

pytestmark = pytest.mark.integration

KUBECA = str(BIN / "kubeca")
NODE = "cp-1"
WORKER = "worker-1"
LOCAL_URL = "https://127.0.0.1:6443"  # controller-manager and scheduler: advertise:6443
EXTRA_SANS = ("api.example.com", "*.apps.example.com", "10.0.0.100", "fd00::10")
# kubeadm's apiserver SANs (kubernetes-pki.md) for this node, plus the extra ones.
APISERVER_DNS = {
    NODE,
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "api.example.com",
    "*.apps.example.com",
}
APISERVER_IPS = {"127.0.0.1", "10.96.0.1", "10.0.0.100", "fd00::10"}
KUBECTL_TIMEOUT = 30


@dataclass(frozen=True)
class Identity:
    directory: str  # "control-plane" or "worker"
    file: str
    cn: str
    orgs: tuple[str, ...]
    local: bool = False  # server is the local API endpoint, not the control-plane endpoint


IDENTITIES = {
    "admin": Identity(
        "control-plane", "admin.conf", "kubernetes-admin", ("kubeadm:cluster-admins",)
    ),
    "super-admin": Identity(
        "control-plane", "super-admin.conf", "kubernetes-super-admin", ("system:masters",)
    ),
    "controller-manager": Identity(
        "control-plane", "controller-manager.conf", "system:kube-controller-manager", (), local=True
    ),
    "scheduler": Identity(
        "control-plane", "scheduler.conf", "system:kube-scheduler", (), local=True
    ),
    "kubelet": Identity("control-plane", "kubelet.conf", f"system:node:{NODE}", ("system:nodes",)),
    "worker-kubelet": Identity(
        "worker", "kubelet.conf", f"system:node:{WORKER}", ("system:nodes",)
    ),
}


@dataclass(frozen=True)
class Cluster:
    control_plane: Path
    worker: Path
    endpoint: TLSEndpoint
    home: Path  # HOME for kubectl, so it reads and writes nothing of the real user's
    kubernetes_ca: bytes  # as the server hands it out

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.endpoint.port}"

    @property
    def pki(self) -> Path:
        return self.control_plane / "pki"

    def kubeconfig(self, identity: Identity) -> Path:
        root = self.control_plane if identity.directory == "control-plane" else self.worker
        return root / identity.file


def _kubeca(config: Path, *args: str | Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "KUBECA_CLIENT_CONFIG"}
    result = subprocess.run(
        [KUBECA, "--config", str(config), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _kubectl(cluster: Cluster, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["HOME"] = str(cluster.home)
    return subprocess.run(
        ["kubectl", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=KUBECTL_TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A super-admin-granting server, a control-plane and a worker layout pointing at a
    TLS endpoint that serves the issued apiserver certificate."""
    base = tmp_path_factory.mktemp("kubectl")
    token = make_token(base / "hsm")
    server_config = write_server_config(
        base / "server", token, extra="[profiles]\nenable_super_admin = true\n"
    )
    run_server_cli(server_config, token, "init")
    server = RunningServer(server_config, token).start()
    endpoint = TLSEndpoint()  # bound now: its port goes into the kubeconfigs
    try:
        with server.client() as client:
            kubernetes_ca = client.ca_certificates("kubernetes-ca")[0].certificate_pem.encode()
        config = server.client_config(base / "client.toml")
        control_plane, worker = base / "control-plane", base / "worker"
        address = f"127.0.0.1:{endpoint.port}"
        _kubeca(
            config,
            *("pki", "control-plane", "--node-name", NODE, "--advertise-address", "127.0.0.1"),
            *("--control-plane-endpoint", address, "--apiserver-cert-sans", ",".join(EXTRA_SANS)),
            *("--dir", control_plane),
        )
        _kubeca(
            config,
            *("pki", "worker", "--node-name", WORKER, "--address", "127.0.0.1"),
            *("--control-plane-endpoint", address, "--dir", worker),
        )
        pki = control_plane / "pki"
        endpoint.start(pki / "apiserver.crt", pki / "apiserver.key", pki / "ca.crt")
        home = base / "home"
        home.mkdir()
        yield Cluster(control_plane, worker, endpoint, home, kubernetes_ca)
    finally:
        endpoint.stop()
        server.stop()


def _fields(path: Path) -> dict[str, str]:
    """The scalar fields of the kubeconfig file as written (quotes removed)."""
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*(?:- )?([a-z-]+):\s*(.+?)\s*$", line)
        if match:
            value = match.group(2)
            fields.setdefault(match.group(1), json.loads(value) if value[0] == '"' else value)
    return fields


def _cn(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _orgs(name: x509.Name) -> tuple[str, ...]:
    return tuple(str(a.value) for a in name.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# ------------------------------------------------- 1. kubectl loads every kubeconfig


@pytest.mark.parametrize("who", IDENTITIES)
def test_kubectl_config_view_round_trips_the_embedded_data(cluster: Cluster, who: str) -> None:
    identity = IDENTITIES[who]
    path = cluster.kubeconfig(identity)
    result = _kubectl(cluster, "--kubeconfig", path, "config", "view", "--raw", "-o", "json")
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert len(view["clusters"]) == len(view["users"]) == len(view["contexts"]) == 1
    cluster_entry, user = view["clusters"][0]["cluster"], view["users"][0]["user"]
    context = view["contexts"][0]
    assert view["current-context"] == context["name"]
    assert context["context"]["cluster"] == view["clusters"][0]["name"]
    assert context["context"]["user"] == view["users"][0]["name"] == identity.cn

    fields = _fields(path)
    for name in ("certificate-authority-data", "server"):
        assert cluster_entry[name] == fields[name], name
    for name in ("client-certificate-data", "client-key-data"):
        assert user[name] == fields[name], name
    assert cluster_entry["server"] == (LOCAL_URL if identity.local else cluster.url)

    ca_pem = base64.b64decode(cluster_entry["certificate-authority-data"], validate=True)
    assert ca_pem == cluster.kubernetes_ca == (cluster.pki / "ca.crt").read_bytes()
    cert = x509.load_pem_x509_certificate(
        base64.b64decode(user["client-certificate-data"], validate=True)
    )
    key = serialization.load_pem_private_key(
        base64.b64decode(user["client-key-data"], validate=True), password=None
    )
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    assert _spki(cert.public_key()) == _spki(key.public_key())
    assert (_cn(cert.subject), _orgs(cert.subject)) == (identity.cn, identity.orgs)


# ------------------------------------------- 2. every identity is accepted by the endpoint


@pytest.mark.parametrize("who", IDENTITIES)
def test_kubectl_reaches_the_endpoint_as_each_identity(cluster: Cluster, who: str) -> None:
    identity = IDENTITIES[who]
    path = cluster.kubeconfig(identity)
    override: list[str] = []
    if identity.local:
        # controller-manager and scheduler talk to their own apiserver on advertise:6443;
        # the test endpoint listens elsewhere, so point kubectl at it explicitly.
        assert _fields(path)["server"] == LOCAL_URL
        override = ["--server", cluster.url]
    cluster.endpoint.reset()
    result = _kubectl(cluster, "--kubeconfig", path, *override, "get", "--raw", "/healthz")
    seen = cluster.endpoint.reset()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok"
    assert "/healthz" in seen.paths
    assert seen.refused == []
    assert seen.clients, "the endpoint saw no client certificate"
    for client in seen.clients:
        assert (_cn(client.subject), _orgs(client.subject)) == (identity.cn, identity.orgs)


def test_version_endpoint_answers_json(cluster: Cluster) -> None:
    admin = cluster.kubeconfig(IDENTITIES["admin"])
    result = _kubectl(cluster, "--kubeconfig", admin, "get", "--raw", "/version")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["gitVersion"] == "v1.32.0-kubeca-test"


def _kubeconfig_with(cluster: Cluster, directory: Path, cert: Path, key: Path) -> Path:
    """A kubeconfig (JSON is YAML) trusting kubernetes-ca, with this client cert and key."""
    user = "test-user"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubernetes",
                "cluster": {
                    "server": cluster.url,
                    "certificate-authority-data": base64.b64encode(cluster.kubernetes_ca).decode(),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
                    "client-key-data": base64.b64encode(key.read_bytes()).decode(),
                },
            }
        ],
        "contexts": [{"name": "test", "context": {"cluster": "kubernetes", "user": user}}],
        "current-context": "test",
    }
    path = directory / f"{cert.stem}.kubeconfig"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def test_a_kubernetes_ca_client_certificate_in_a_hand_made_kubeconfig_is_accepted(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The control for the refusals below: the same kubeconfig, a kubernetes-ca client."""
    pki = cluster.pki
    path = _kubeconfig_with(
        cluster,
        tmp_path,
        pki / "apiserver-kubelet-client.crt",
        pki / "apiserver-kubelet-client.key",
    )
    cluster.endpoint.reset()
    result = _kubectl(cluster, "--kubeconfig", path, "get", "--raw", "/healthz")
    seen = cluster.endpoint.reset()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok"
    assert [_cn(c.subject) for c in seen.clients] == ["kube-apiserver-kubelet-client"]


@pytest.mark.parametrize(
    "base", ["apiserver-etcd-client", "etcd/healthcheck-client", "front-proxy-client"]
)
def test_a_client_certificate_from_another_ca_is_refused_at_the_handshake(
    cluster: Cluster, tmp_path: Path, base: str
) -> None:
    pki = cluster.pki
    path = _kubeconfig_with(cluster, tmp_path, pki / f"{base}.crt", pki / f"{base}.key")
    cluster.endpoint.reset()
    result = _kubectl(cluster, "--kubeconfig", path, "get", "--raw", "/healthz")
    cluster.endpoint.wait_for(lambda seen: bool(seen.refused))
    seen = cluster.endpoint.reset()
    assert result.returncode != 0, result.stdout
    assert result.stdout == ""
    assert seen.paths == [] and seen.clients == []
    assert seen.refused, "the endpoint recorded no refused handshake"
    assert all("certificate verify failed" in reason for reason in seen.refused), seen.refused


# ---------------------------------------------------------- 3. hostname verification


def _apiserver_sans(cluster: Cluster) -> tuple[set[str], set[str]]:
    cert = x509.load_pem_x509_certificate((cluster.pki / "apiserver.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def test_apiserver_certificate_carries_kubeadms_names_and_the_extra_ones(cluster: Cluster) -> None:
    assert _apiserver_sans(cluster) == (APISERVER_DNS, APISERVER_IPS)


def _context(cluster: Cluster) -> ssl.SSLContext:
    pki = cluster.pki
    return client_context(
        pki / "ca.crt", pki / "apiserver-kubelet-client.crt", pki / "apiserver-kubelet-client.key"
    )


# Every name in the SANs; the wildcard is checked through a name it covers.
VERIFIED_NAMES = sorted(
    {n.replace("*.", "console.") for n in APISERVER_DNS} | APISERVER_IPS, key=str
)


@pytest.mark.parametrize("name", VERIFIED_NAMES)
def test_apiserver_certificate_passes_hostname_verification_as(cluster: Cluster, name: str) -> None:
    # Connect to 127.0.0.1 but verify as `name`: for an IP, Python checks the IP SANs.
    reply = https_get(cluster.endpoint.port, "/healthz", _context(cluster), server_hostname=name)
    assert reply.startswith(b"HTTP/1.0 200"), reply[:80]
    assert reply.endswith(b"\r\n\r\nok")


@pytest.mark.parametrize(
    "name",
    [
        "not-in-the-sans.example.com",
        "kubernetes.default.svc.cluster",
        "cp-2",
        "deep.console.apps.example.com",  # a wildcard covers one label only
        "apps.example.com",
        "10.96.0.2",
        "127.0.0.2",
        "::1",
    ],
)
def test_a_name_not_in_the_sans_fails_hostname_verification(cluster: Cluster, name: str) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        https_get(cluster.endpoint.port, "/healthz", _context(cluster), server_hostname=name)


def test_kubectl_verifies_the_apiserver_as_kubernetes_default_svc(cluster: Cluster) -> None:
    admin = cluster.kubeconfig(IDENTITIES["admin"])
    args = ("--kubeconfig", admin, "--tls-server-name")
    result = _kubectl(cluster, *args, "kubernetes.default.svc", "get", "--raw", "/healthz")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok"
    refused = _kubectl(cluster, *args, "not-in-the-sans.example.com", "get", "--raw", "/healthz")
    assert refused.returncode != 0
    assert "x509" in refused.stderr and "not-in-the-sans.example.com" in refused.stderr
