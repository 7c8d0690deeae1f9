"""A real three-member etcd cluster runs on kubeca's certificates, and only etcd-ca's.

Debian's etcd 3.4 runs three members on 127.0.0.11-13, each with the server and peer
certificates `kubeca pki control-plane` wrote for it, client-cert auth on and peer TLS
with peer client-cert auth on, all trusting pki/etcd/ca.crt. Debian's etcdctl then talks
to it with the layout's client certificates: the two etcd-ca ones work, and the ones from
kubernetes-ca and front-proxy-ca are refused by etcd's TLS handshake (CA separation).
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import secrets
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from tests.etcd_cluster import (
    EtcdCluster,
    Member,
    TLSPair,
    prepare_member,
    running_cluster,
    served_certificate,
)
from tests.support import RunningServer

pytestmark = pytest.mark.integration

HOSTS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
ETCD_CLIENTS = ("etcd/healthcheck-client", "apiserver-etcd-client")
# A client certificate from each CA that is not etcd-ca, with that CA's name.
FOREIGN_CLIENTS = (
    ("apiserver-kubelet-client", "kubernetes-ca"),
    ("front-proxy-client", "front-proxy-ca"),
)
UNKNOWN_AUTHORITY = "certificate signed by unknown authority"
JOIN_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("etcd-cluster")


@pytest.fixture(scope="module")
def kubeca_config(server: RunningServer, workdir: Path) -> Path:
    return server.client_config(workdir / "client.toml")


@pytest.fixture(scope="module")
def cluster(kubeca_config: Path, workdir: Path) -> Iterator[EtcdCluster]:
    """Three members, healthy; stopped (SIGTERM, then SIGKILL) at the end whatever happens."""
    with running_cluster(kubeca_config, workdir, HOSTS) as running:
        yield running


def _pair(cluster: EtcdCluster, base: str) -> TLSPair:
    return TLSPair.under(cluster.members[0].pki, base)


def _ok(cluster: EtcdCluster, result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode == 0, (
        f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{cluster.logs()}"
    )


def _get(cluster: EtcdCluster, key: str, endpoints: str = "") -> list[str]:
    """The values stored under ``key``, read with the healthcheck-client certificate."""
    args = ["get", key, "-w", "json"]
    if endpoints:
        args.append("--consistency=s")  # answer from this member's own copy
    result = cluster.etcdctl(_pair(cluster, "etcd/healthcheck-client"), *args, endpoints=endpoints)
    _ok(cluster, result, f"get {key}")
    kvs = json.loads(result.stdout).get("kvs", [])
    return [base64.b64decode(kv["value"]).decode() for kv in kvs]


def _member_list(cluster: EtcdCluster) -> list[dict[str, Any]]:
    result = cluster.etcdctl(
        _pair(cluster, "etcd/healthcheck-client"), "member", "list", "-w", "json"
    )
    _ok(cluster, result, "member list")
    members: list[dict[str, Any]] = json.loads(result.stdout)["members"]
    return members


def _issued_by(certificate: x509.Certificate, ca_file: Path) -> bool:
    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    try:
        certificate.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _logs_since(members: list[Member], offsets: list[int]) -> str:
    return "\n".join(m.log_since(o) for m, o in zip(members, offsets, strict=True))


def _wait_for_logs(members: list[Member], offsets: list[int], text: str, timeout: float) -> str:
    """What ``members`` logged after ``offsets``, once it holds ``text`` or at ``timeout``."""
    deadline = time.monotonic() + timeout
    logged = _logs_since(members, offsets)
    while text not in logged and time.monotonic() < deadline:
        time.sleep(0.1)
        logged = _logs_since(members, offsets)
    return logged


def _assert_member_certificate(
    served_der: bytes, member: Member, file: Path, ca_files: dict[str, Path]
) -> None:
    served = x509.load_der_x509_certificate(served_der)
    assert served == _load(file), f"{member.name} does not serve {file}"
    common_names = served.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in common_names] == [member.name]
    sans = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted([member.name, "localhost"])
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(member.host),
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    # Issued by the service's own etcd-ca, and by neither of the other two CAs.
    assert _issued_by(served, ca_files["etcd-ca"])
    assert not _issued_by(served, ca_files["kubernetes-ca"])
    assert not _issued_by(served, ca_files["front-proxy-ca"])


def test_cluster_has_three_started_members(cluster: EtcdCluster) -> None:
    members = _member_list(cluster)
    by_name = {m.get("name", ""): m for m in members}
    assert len(members) == 3, members
    assert set(by_name) == {"etcd-1", "etcd-2", "etcd-3"}, members  # unstarted ones have no name
    for member in cluster.members:
        listed = by_name[member.name]
        assert listed["clientURLs"] == [member.client_url]
        assert listed["peerURLs"] == [member.peer_url]
        assert not listed.get("isLearner", False)


def _assert_all_healthy(cluster: EtcdCluster) -> None:
    result = cluster.etcdctl(
        _pair(cluster, "etcd/healthcheck-client"), "endpoint", "health", "--cluster", "-w", "json"
    )
    _ok(cluster, result, "endpoint health --cluster")
    health = {entry["endpoint"]: entry["health"] for entry in json.loads(result.stdout)}
    assert health == {m.client_url: True for m in cluster.members}


def test_every_member_is_healthy(cluster: EtcdCluster) -> None:
    _assert_all_healthy(cluster)


@pytest.mark.parametrize("index", range(len(HOSTS)))
def test_member_serves_its_kubeca_server_certificate(
    cluster: EtcdCluster, ca_files: dict[str, Path], index: int
) -> None:
    member = cluster.members[index]
    # served_certificate has already checked the chain to etcd-ca and the IP SAN.
    der = served_certificate(
        member.host, member.client_port, member.etcd_ca, _pair(cluster, "etcd/healthcheck-client")
    )
    _assert_member_certificate(der, member, member.pki / "etcd" / "server.crt", ca_files)


@pytest.mark.parametrize("index", range(len(HOSTS)))
def test_member_serves_its_kubeca_peer_certificate(
    cluster: EtcdCluster, ca_files: dict[str, Path], index: int
) -> None:
    member = cluster.members[index]
    der = served_certificate(
        member.host,
        member.peer_port,
        member.etcd_ca,
        TLSPair.under(member.pki, "etcd/peer"),
    )
    _assert_member_certificate(der, member, member.pki / "etcd" / "peer.crt", ca_files)


@pytest.mark.parametrize("base", ETCD_CLIENTS)
def test_etcd_ca_client_writes_and_reads(cluster: EtcdCluster, base: str) -> None:
    key = f"/kubeca-test/{base}"
    value = secrets.token_hex(8)
    client = _pair(cluster, base)
    put = cluster.etcdctl(client, "put", key, value)
    _ok(cluster, put, f"put with {base}")
    assert put.stdout.strip() == "OK"
    got = cluster.etcdctl(client, "get", key, "--print-value-only")
    _ok(cluster, got, f"get with {base}")
    assert got.stdout.strip() == value
    # Replicated over peer TLS: every member has it in its own copy.
    for member in cluster.members:
        assert _get(cluster, key, endpoints=member.client_url) == [value], member.name


@pytest.mark.parametrize(("base", "authority"), FOREIGN_CLIENTS)
def test_client_from_another_ca_is_refused(
    cluster: EtcdCluster, ca_files: dict[str, Path], base: str, authority: str
) -> None:
    client = _pair(cluster, base)
    assert _issued_by(_load(client.cert), ca_files[authority])  # the premise
    key = f"/kubeca-test/refused/{base}"
    offsets = [m.log_size() for m in cluster.members]
    put = cluster.etcdctl(client, "put", key, "must-not-land", command_timeout=2)
    assert put.returncode != 0, f"etcd accepted a {authority} client certificate: {put.stdout}"
    assert "OK" not in put.stdout
    # etcdctl only reports a dead connection ("context deadline exceeded"): with TLS 1.3
    # the client learns of the rejection after its handshake. etcd logs the reason.
    logged = _wait_for_logs(cluster.members, offsets, UNKNOWN_AUTHORITY, 5)
    assert "rejected connection" in logged, f"{put.stderr}\n{logged}"
    assert UNKNOWN_AUTHORITY in logged, f"{put.stderr}\n{logged}"
    assert _get(cluster, key) == []


@pytest.mark.parametrize(("base", "authority"), FOREIGN_CLIENTS)
def test_peer_port_refuses_client_from_another_ca(
    cluster: EtcdCluster, ca_files: dict[str, Path], base: str, authority: str
) -> None:
    client = _pair(cluster, base)
    assert _issued_by(_load(client.cert), ca_files[authority])
    for member in cluster.members:
        offset = member.log_size()
        context = ssl.create_default_context(cafile=str(member.etcd_ca))
        context.load_cert_chain(str(client.cert), str(client.key))
        connection = http.client.HTTPSConnection(
            member.host, member.peer_port, context=context, timeout=5
        )
        try:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                connection.request("GET", "/members")
                connection.getresponse().read()
        finally:
            connection.close()
        logged = _wait_for_logs([member], [offset], UNKNOWN_AUTHORITY, 5)
        assert UNKNOWN_AUTHORITY in logged, f"{member.name} did not log the rejection"


def test_peer_port_accepts_etcd_peer_certificate(cluster: EtcdCluster) -> None:
    """The control for the refusal above: the same request with an etcd-ca peer cert."""
    member = cluster.members[0]
    context = ssl.create_default_context(cafile=str(member.etcd_ca))
    peer = TLSPair.under(cluster.members[1].pki, "etcd/peer")
    context.load_cert_chain(str(peer.cert), str(peer.key))
    connection = http.client.HTTPSConnection(
        member.host, member.peer_port, context=context, timeout=5
    )
    try:
        connection.request("GET", "/members")
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200, body
    assert {m["name"] for m in json.loads(body)} >= {"etcd-1", "etcd-2", "etcd-3"}


def _add_learner(cluster: EtcdCluster, joiner: Member) -> int:
    """`member add --learner`, as kubeadm joins etcd. etcd's strict reconfig check answers
    "unhealthy cluster" until every peer link has been up for 5 s: retry until then."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while True:
        result = cluster.etcdctl(
            _pair(cluster, "etcd/healthcheck-client"),
            "member",
            "add",
            joiner.name,
            "--learner",
            f"--peer-urls={joiner.peer_url}",
            "-w",
            "json",
        )
        if "unhealthy cluster" not in result.stderr or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    _ok(cluster, result, f"member add {joiner.name}")
    member_id: int = json.loads(result.stdout)["member"]["ID"]
    return member_id


def _remove(cluster: EtcdCluster, member_id: int) -> None:
    result = cluster.etcdctl(
        _pair(cluster, "etcd/healthcheck-client"), "member", "remove", f"{member_id:x}"
    )
    _ok(cluster, result, f"member remove {member_id:x}")


def _start_joiner(cluster: EtcdCluster, joiner: Member) -> None:
    initial = f"{cluster.initial_cluster},{joiner.name}={joiner.peer_url}"
    joiner.start(initial, cluster.token, state="existing")


def _started(cluster: EtcdCluster, member_id: int) -> bool:
    return any(m["ID"] == member_id and m.get("name") for m in _member_list(cluster))


def test_peer_with_etcd_ca_certificate_joins(
    cluster: EtcdCluster, kubeca_config: Path, workdir: Path
) -> None:
    """The control for the refusal below: the same join with kubeca's etcd-peer cert."""
    joiner = prepare_member(kubeca_config, workdir, 4, "127.0.0.14")
    member_id = _add_learner(cluster, joiner)
    try:
        _start_joiner(cluster, joiner)
        deadline = time.monotonic() + JOIN_TIMEOUT
        while not _started(cluster, member_id) and time.monotonic() < deadline:
            assert joiner.running(), joiner.log_tail()
            time.sleep(0.3)
        assert _started(cluster, member_id), f"{joiner.log_tail()}\n{cluster.logs()}"
    finally:
        try:
            _remove(cluster, member_id)
        finally:
            joiner.stop()


def test_peer_with_kubernetes_ca_certificate_cannot_join(
    cluster: EtcdCluster, kubeca_config: Path, workdir: Path, ca_files: dict[str, Path]
) -> None:
    joiner = prepare_member(kubeca_config, workdir, 5, "127.0.0.15")
    # kube-apiserver's certificate names 127.0.0.15 too, but kubernetes-ca signed it.
    joiner.peer_pair = TLSPair.under(joiner.pki, "apiserver")
    assert _issued_by(_load(joiner.peer_pair.cert), ca_files["kubernetes-ca"])
    offsets = [m.log_size() for m in cluster.members]
    member_id = _add_learner(cluster, joiner)
    try:
        _start_joiner(cluster, joiner)
        deadline = time.monotonic() + JOIN_TIMEOUT
        logged, own = "", ""
        while time.monotonic() < deadline:
            logged = _logs_since(cluster.members, offsets)
            own = joiner.log_since(0)
            if UNKNOWN_AUTHORITY in logged and "bad certificate" in own:
                break
            time.sleep(0.3)
        # The members reject its certificate, and it hears as much ("remote error: tls:
        # bad certificate") when it asks them for the member list it needs to join.
        assert UNKNOWN_AUTHORITY in logged, f"{joiner.log_tail()}\n{logged}"
        assert "bad certificate" in own, f"{joiner.log_tail()}\n{logged}"
        assert not _started(cluster, member_id), f"{joiner.log_tail()}\n{logged}"
    finally:
        try:
            _remove(cluster, member_id)
        finally:
            joiner.stop()
    # The three members carry on.
    _assert_all_healthy(cluster)
