"""A PKI laid out exactly as kubeadm makes it, built with cryptography.

The CAs as client-go's self-signed helper makes them (reference/ca-lifecycle.md):
RSA-2048, KeyUsage digitalSignature|keyEncipherment|keyCertSign (critical, no cRLSign),
CA:true, an SKI, a DNS SAN equal to the CN, ten years; keys as PKCS#8 "PRIVATE KEY"
PEM in 0600 files. Leaves for etcd members as kubeadm's etcd/server, etcd/peer and
etcd/healthcheck-client; sa.key/sa.pub.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILES = {
    "kubernetes-ca": ("ca", "kubernetes"),
    "etcd-ca": ("etcd/ca", "etcd-ca"),
    "front-proxy-ca": ("front-proxy-ca", "front-proxy-ca"),
}


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey, passphrase: bytes | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    path.chmod(0o600)


def _write_cert(path: Path, certificate: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def kubeadm_ca(common_name: str, key: rsa.RSAPrivateKey, ca: bool = True) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class KubeadmCA:
    key: rsa.RSAPrivateKey
    certificate: x509.Certificate


def leaf(
    ca: KubeadmCA,
    common_name: str,
    *,
    server: bool,
    client: bool,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A leaf as kubeadm signs one: one year, digitalSignature|keyEncipherment."""
    now = datetime.now(UTC)
    key = _key()
    usages = [
        *([ExtendedKeyUsageOID.SERVER_AUTH] if server else []),
        *([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []),
    ]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca.key, hashes.SHA256())


def write_kubeadm_pki(pki: Path, passphrase: bytes | None = None) -> dict[str, KubeadmCA]:
    """ca.crt/key, etcd/ca.crt/key, front-proxy-ca.crt/key, sa.key/sa.pub under ``pki``."""
    made = {}
    for authority, (base, common_name) in CA_FILES.items():
        key = _key()
        certificate = kubeadm_ca(common_name, key)
        _write_key(pki / f"{base}.key", key, passphrase)
        _write_cert(pki / f"{base}.crt", certificate)
        made[authority] = KubeadmCA(key, certificate)
    sa = _key()
    _write_key(pki / "sa.key", sa, passphrase)
    (pki / "sa.pub").write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return made


def write_etcd_member(pki: Path, ca: KubeadmCA, node: str, address: str) -> None:
    """etcd/server, etcd/peer and etcd/healthcheck-client as kubeadm makes them."""
    sans = {"dns": ("localhost", node), "ips": (address, "127.0.0.1", "::1")}
    for base, server, client, cn in (
        ("etcd/server", True, True, node),
        ("etcd/peer", True, True, node),
        ("etcd/healthcheck-client", False, True, "kube-etcd-healthcheck-client"),
    ):
        extra = sans if server else {"dns": (), "ips": ()}
        key, certificate = leaf(
            ca, cn, server=server, client=client, dns=extra["dns"], ips=extra["ips"]
        )
        _write_key(pki / f"{base}.key", key)
        _write_cert(pki / f"{base}.crt", certificate)
    _write_cert(pki / "etcd/ca.crt", ca.certificate)
