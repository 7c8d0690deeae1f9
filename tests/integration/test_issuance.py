"""Every profile, issued by a real server whose CA keys are in a real SoftHSM token.

The expectations below are transcribed from kubernetes-pki.md (kubeadm's certlist.go
and kubeconfig.go), independently of the profile code they check.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kubeca_client.client import Client
from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key

from tests.support import BIN, RunningServer, make_token, run_server_cli, write_server_config

SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
NODE = {"node_name": "cp-1", "advertise_address": "192.0.2.10"}
ALL_CAS = ("kubernetes-ca", "etcd-ca", "front-proxy-ca")
_SPKI = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class Expected:
    ca: str
    cn: str
    orgs: tuple[str, ...]
    eku: tuple[x509.ObjectIdentifier, ...]
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    params: tuple[tuple[str, str], ...] = ()


APISERVER_PARAMS = {
    **NODE,
    "control_plane_endpoint": "k8s.example.internal:6443",
    "extra_sans": "10.0.0.100,api.example.com,*.apps.example.com",
}
EXPECTED: dict[str, Expected] = {
    "apiserver": Expected(
        "kubernetes-ca",
        "kube-apiserver",
        (),
        (SERVER_AUTH,),
        dns=(
            "*.apps.example.com",
            "api.example.com",
            "cp-1",
            "k8s.example.internal",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ips=("10.96.0.1", "192.0.2.10", "10.0.0.100"),
        params=tuple(APISERVER_PARAMS.items()),
    ),
    "apiserver-kubelet-client": Expected(
        "kubernetes-ca",
        "kube-apiserver-kubelet-client",
        ("kubeadm:cluster-admins",),
        (CLIENT_AUTH,),
    ),
    "front-proxy-client": Expected("front-proxy-ca", "front-proxy-client", (), (CLIENT_AUTH,)),
    "etcd-server": Expected(
        "etcd-ca",
        "cp-1",
        (),
        (SERVER_AUTH, CLIENT_AUTH),
        dns=("cp-1", "localhost"),
        ips=("192.0.2.10", "127.0.0.1", "::1"),
        params=tuple(NODE.items()),
    ),
    "etcd-peer": Expected(
        "etcd-ca",
        "cp-1",
        (),
        (SERVER_AUTH, CLIENT_AUTH),
        dns=("cp-1", "etcd.example.com", "localhost"),
        ips=("192.0.2.10", "127.0.0.1", "::1"),
        params=(*NODE.items(), ("extra_sans", "etcd.example.com")),
    ),
    "etcd-healthcheck-client": Expected(
        "etcd-ca", "kube-etcd-healthcheck-client", (), (CLIENT_AUTH,)
    ),
    "apiserver-etcd-client": Expected("etcd-ca", "kube-apiserver-etcd-client", (), (CLIENT_AUTH,)),
    "admin": Expected(
        "kubernetes-ca", "kubernetes-admin", ("kubeadm:cluster-admins",), (CLIENT_AUTH,)
    ),
    "super-admin": Expected(
        "kubernetes-ca", "kubernetes-super-admin", ("system:masters",), (CLIENT_AUTH,)
    ),
    "controller-manager": Expected(
        "kubernetes-ca", "system:kube-controller-manager", (), (CLIENT_AUTH,)
    ),
    "scheduler": Expected("kubernetes-ca", "system:kube-scheduler", (), (CLIENT_AUTH,)),
    "kube-proxy": Expected("kubernetes-ca", "system:kube-proxy", (), (CLIENT_AUTH,)),
    "kubelet-client": Expected(
        "kubernetes-ca",
        "system:node:worker-1",
        ("system:nodes",),
        (CLIENT_AUTH,),
        params=(("node_name", "worker-1"),),
    ),
    "kubelet-serving": Expected(
        "kubernetes-ca",
        "system:node:worker-1",
        ("system:nodes",),
        (SERVER_AUTH,),
        dns=("worker-1",),
        ips=("10.0.0.21",),
        params=(("node_name", "worker-1"), ("advertise_address", "10.0.0.21")),
    ),
}


@dataclass
class Deployment:
    server: RunningServer
    client: Client
    algorithm: str
    ca_files: dict[str, Path]
    workdir: Path


@pytest.fixture(scope="module", params=["ECDSA-P256", "RSA-2048"])
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    """A server of its own, on a token of its own, with super-admin explicitly enabled."""
    algorithm: str = request.param
    base = tmp_path_factory.mktemp(f"deploy-{algorithm}")
    token = make_token(base / "hsm")
    config = write_server_config(
        base / "server",
        token,
        key_algorithm=algorithm,
        extra="[profiles]\nenable_super_admin = true\n",
    )
    run_server_cli(config, token, "init")
    server = RunningServer(config, token).start()
    client = server.client()
    ca_files = {}
    for ca in client.ca_certificates():
        path = base / f"{ca.authority}.crt"
        path.write_text(ca.certificate_pem)
        ca_files[ca.authority] = path
    try:
        yield Deployment(server, client, algorithm, ca_files, base)
    finally:
        client.close()
        server.stop()


def _issue(
    d: Deployment, profile: str, key_algorithm: KeyAlgorithm
) -> tuple[x509.Certificate, Path]:
    key = generate_private_key(key_algorithm)
    expected = EXPECTED[profile]
    issued = d.client.issue_certificate(profile, build_csr(key), dict(expected.params))
    path = d.workdir / f"{profile}-{key_algorithm.value}.crt"
    path.write_text(issued.certificate_pem)
    certificate = issued.certificate
    assert certificate.public_key().public_bytes(*_SPKI) == key.public_key().public_bytes(*_SPKI)
    assert issued.authority == expected.ca
    assert issued.serial == format(certificate.serial_number, "x")
    assert issued.fingerprint_sha256 == certificate.fingerprint(hashes.SHA256()).hex()
    assert issued.not_after == certificate.not_valid_after_utc
    return certificate, path


def _openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout


def _openssl_verify(ca_file: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_file), str(cert)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("profile", sorted(EXPECTED))
@pytest.mark.parametrize("leaf_key", [KeyAlgorithm.ECDSA_P256, KeyAlgorithm.RSA_2048])
def test_profile_issues_exactly_the_kubeadm_certificate(
    deployment: Deployment, profile: str, leaf_key: KeyAlgorithm
) -> None:
    expected = EXPECTED[profile]
    cert, path = _issue(deployment, profile, leaf_key)
    ca_cert = x509.load_pem_x509_certificate(deployment.ca_files[expected.ca].read_bytes())

    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == expected.cn
    orgs = tuple(a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    assert orgs == expected.orgs
    assert len(cert.subject) == 1 + len(expected.orgs)
    assert cert.issuer == ca_cert.subject

    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    # keyEncipherment only where it means something: RSA leaf keys (RFC 5480).
    assert usage.value.key_encipherment is (leaf_key is KeyAlgorithm.RSA_2048)
    assert not usage.value.key_cert_sign and not usage.value.crl_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert tuple(eku) == expected.eku

    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest

    if expected.dns or expected.ips:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert tuple(san.get_values_for_type(x509.DNSName)) == expected.dns
        assert set(san.get_values_for_type(x509.IPAddress)) == {
            ipaddress.ip_address(i) for i in expected.ips
        }
        assert len(san.get_values_for_type(x509.IPAddress)) == len(expected.ips)
    else:
        with pytest.raises(x509.ExtensionNotFound):
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)

    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == timedelta(days=365, minutes=5)
    assert abs(cert.not_valid_before_utc - (datetime.now(UTC) - timedelta(minutes=5))) < timedelta(
        seconds=30
    )
    assert 0 < cert.serial_number < 2**159
    assert cert.serial_number.bit_length() > 64

    if deployment.algorithm.startswith("ECDSA"):
        assert isinstance(ca_cert.public_key(), ec.EllipticCurvePublicKey)
        assert cert.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    else:
        assert isinstance(ca_cert.public_key(), rsa.RSAPublicKey)
        assert cert.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSA_WITH_SHA256

    # The chain verifies with openssl against its own CA and with neither of the others.
    for ca_name in ALL_CAS:
        result = _openssl_verify(deployment.ca_files[ca_name], path)
        if ca_name == expected.ca:
            assert result.returncode == 0, result.stdout + result.stderr
        else:
            assert result.returncode != 0, f"{profile} verified against {ca_name}"


def _pkilint_errors(path: Path) -> list[dict[str, str]]:
    """pkilint's own command-line linter, findings of severity ERROR and worse."""
    result = subprocess.run(
        [str(BIN / "lint_pkix_cert"), "lint", "-s", "ERROR", "-f", "JSON", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    report = json.loads(result.stdout)
    return [
        {"code": f["code"], "message": f["message"], "at": r["node_path"]}
        for r in report["results"]
        for f in r["finding_descriptions"]
    ]


# pkilint applies a web-PKI rule to DNS names: it wants a dot and no wildcard. kubeadm's
# certificates must carry single-label names, and extra SANs may be wildcards. These are
# the only findings accepted, for exactly these names.
ACCEPTED_DNS_FINDINGS = {"kubernetes", "localhost", "cp-1", "worker-1", "*.apps.example.com"}


@pytest.mark.parametrize("profile", sorted(EXPECTED))
def test_profile_output_lints_clean_with_pkilint(deployment: Deployment, profile: str) -> None:
    _, path = _issue(deployment, profile, KeyAlgorithm.ECDSA_P256)
    errors = [
        e
        for e in _pkilint_errors(path)
        if not (
            e["code"] == "pkix.invalid_domain_name_syntax"
            and e["message"].split('"')[1] in ACCEPTED_DNS_FINDINGS
        )
    ]
    assert errors == []


def test_ca_certificates_are_kubeadm_roots_done_better(deployment: Deployment) -> None:
    common_names = {
        "kubernetes-ca": "kubernetes",
        "etcd-ca": "etcd-ca",
        "front-proxy-ca": "front-proxy-ca",
    }
    for name, path in deployment.ca_files.items():
        ca = x509.load_pem_x509_certificate(path.read_bytes())
        assert ca.subject == ca.issuer
        assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == common_names[name]
        ca.verify_directly_issued_by(ca)
        basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
        assert basic.critical and basic.value.ca
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
        assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
        assert not usage.value.digital_signature
        ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
        assert lifetime == timedelta(days=3650, minutes=5)
        assert _pkilint_errors(path) == []


def test_ca_hash_is_kubeadm_discovery_hash(deployment: Deployment) -> None:
    for ca in deployment.client.ca_certificates():
        pem = deployment.ca_files[ca.authority]
        # The same pipeline kubeadm's docs give for --discovery-token-ca-cert-hash.
        pubkey = _openssl("x509", "-pubkey", "-noout", "-in", str(pem))
        der = subprocess.run(
            ["openssl", "pkey", "-pubin", "-outform", "der"],
            input=pubkey.encode(),
            capture_output=True,
            check=True,
        ).stdout
        digest = subprocess.run(
            ["openssl", "dgst", "-sha256", "-hex"], input=der, capture_output=True, check=True
        ).stdout.decode()
        assert ca.ca_cert_hash == "sha256:" + digest.split("= ")[1].strip()
    one = deployment.client.ca_certificates("etcd-ca")
    assert [c.authority for c in one] == ["etcd-ca"]


def test_profiles_are_listed_with_their_rules(deployment: Deployment) -> None:
    profiles = {p.name: p for p in deployment.client.profiles()}
    assert set(profiles) == set(EXPECTED)
    for name, expected in EXPECTED.items():
        p = profiles[name]
        assert p.authority == expected.ca
        assert tuple(p.organizations) == expected.orgs
        assert p.max_lifetime_seconds == 365 * 86400
        assert p.enabled
    apiserver = {q.name: q for q in profiles["apiserver"].parameters}
    assert apiserver["node_name"].required and apiserver["advertise_address"].required
    assert apiserver["service_cidr"].default_value == "10.96.0.0/12"
    assert apiserver["dns_domain"].default_value == "cluster.local"
    assert profiles["kubelet-client"].common_name == "system:node:{node_name}"


def test_short_lifetime_is_honoured(deployment: Deployment) -> None:
    key = generate_private_key(KeyAlgorithm.ECDSA_P256)
    issued = deployment.client.issue_certificate("admin", build_csr(key), lifetime_seconds=900)
    cert = issued.certificate
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(minutes=20)
