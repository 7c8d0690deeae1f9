"""The only way a CA key signs: prepare (lint the copy), then sign that copy, once.

Leaves, CA certificates and CRLs all pass the same two steps; a template prepared by one
signer is refused by another, a prepared template signs at most once, the bytes the
key signs are the bytes that were linted, and a signature that does not verify against
the CA certificate is never handed out.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from kubeca_client.errors import InternalError, InvalidArgument, Unavailable
from kubeca_server.ca.lint import Linter
from kubeca_server.ca.signer import Signer, with_signature
from kubeca_server.keys import CAPrivateKey, CAPublicKey, verify_signature
from kubeca_server.profiles import build_ca

from tests.unit.conftest import CASet, World, inventory, issue, replace_keys
from tests.unit.helpers import NODE_PARAMS, HookedKey, p256_key

NOW = datetime.now(UTC)


class RecordingLinter(Linter):
    """The real linter, noting when it runs; or one that refuses everything."""

    def __init__(self, inner: Linter, events: list[str], *, refuse: bool = False) -> None:
        self._inner = inner
        self._events = events
        self._refuse = refuse

    def check(self, builder: x509.CertificateBuilder, ca_key: CAPublicKey) -> x509.Certificate:
        self._events.append("lint")
        if self._refuse:
            raise InvalidArgument("the certificate would not pass lint: test says no")
        return self._inner.check(builder, ca_key)

    def check_crl(
        self, builder: x509.CertificateRevocationListBuilder, ca_key: CAPublicKey
    ) -> x509.CertificateRevocationList:
        self._events.append("lint-crl")
        if self._refuse:
            raise InternalError("the CRL would not pass lint: test says no")
        return self._inner.check_crl(builder, ca_key)


def counting(events: list[str]) -> HookedKey:
    return HookedKey(ec.generate_private_key(ec.SECP256R1()), lambda: events.append("ca-sign"))


def ca_template(key: CAPrivateKey | CAPublicKey) -> x509.CertificateBuilder:
    public = (
        key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else key
    )
    return build_ca("kubeca-test-ca", public, 7, NOW, timedelta(days=1))


def crl_template(certificate: x509.Certificate) -> x509.CertificateRevocationListBuilder:
    key_id = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(certificate.subject)
        .last_update(NOW.replace(microsecond=0))
        .next_update(NOW.replace(microsecond=0) + timedelta(days=7))
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier(key_id.digest, None, None), critical=False)
    )


# --- through the pipeline ------------------------------------------------------------------


def test_lint_runs_before_the_one_ca_signature(world: World, ca_set: CASet, linter: Linter) -> None:
    events: list[str] = []
    replace_keys(
        world,
        ca_set,
        lambda key: HookedKey(key, lambda: events.append("ca-sign")),
        RecordingLinter(linter, events),
    )
    issued = issue(world, "apiserver", NODE_PARAMS)
    assert events == ["lint", "ca-sign"]
    issued.certificate.verify_directly_issued_by(issued.generation.certificate)


def test_lint_refusal_means_the_ca_key_never_signs(
    world: World, ca_set: CASet, linter: Linter
) -> None:
    events: list[str] = []
    replace_keys(
        world,
        ca_set,
        lambda key: HookedKey(key, lambda: events.append("ca-sign")),
        RecordingLinter(linter, events, refuse=True),
    )
    with pytest.raises(InvalidArgument, match="would not pass lint"):
        issue(world, "admin")
    assert events == ["lint"]
    assert world.records() == []
    assert inventory(world.store) == []


def test_a_name_pkilint_refuses_is_refused_unsigned(
    world: World, ca_set: CASet, linter: Linter
) -> None:
    # "node.1" is a DNS-1123 subdomain, so the parameter parser lets it through, but a
    # numeric top-level label is not a valid domain name: pkilint refuses it.
    signatures: list[str] = []
    replace_keys(world, ca_set, lambda key: HookedKey(key, lambda: signatures.append("x")), linter)
    with pytest.raises(InvalidArgument, match=r"would not pass lint.*node\.1") as caught:
        issue(world, "etcd-server", dict(NODE_PARAMS, extra_sans="node.1"))
    assert signatures == []
    assert "request_fingerprint" in caught.value.context
    assert inventory(world.store) == []


# --- the signer itself ---------------------------------------------------------------------


def test_prepare_lints_then_sign_signs_once(linter: Linter) -> None:
    events: list[str] = []
    key = counting(events)
    signer = Signer(key, RecordingLinter(linter, events))
    prepared = signer.prepare(ca_template(key))
    assert events == ["lint"]
    certificate = signer.sign(prepared)
    assert events == ["lint", "ca-sign"]
    certificate.verify_directly_issued_by(certificate)


def test_a_prepared_template_is_signed_at_most_once(linter: Linter) -> None:
    events: list[str] = []
    key = counting(events)
    signer = Signer(key, linter)
    prepared = signer.prepare(ca_template(key))
    signer.sign(prepared)
    with pytest.raises(InternalError, match="signed twice"):
        signer.sign(prepared)
    assert events == ["ca-sign"]


def test_a_template_prepared_by_one_signer_is_refused_by_another(linter: Linter) -> None:
    events: list[str] = []
    first, second = Signer(counting(events), linter), Signer(counting(events), linter)
    prepared = first.prepare(ca_template(first.public_key))
    with pytest.raises(InternalError, match="prepared for another CA key"):
        second.sign(prepared)
    assert events == []
    # The refusal did not spend it: its own signer still signs it.
    first.sign(prepared)
    assert events == ["ca-sign"]


def test_a_crl_is_linted_before_it_is_signed(linter: Linter) -> None:
    events: list[str] = []
    key = counting(events)
    signer = Signer(key, RecordingLinter(linter, events))
    certificate = signer.sign(signer.prepare(ca_template(key)))
    events.clear()
    crl = signer.sign_crl(signer.prepare_crl(crl_template(certificate)))
    assert events == ["lint-crl", "ca-sign"]
    assert crl.is_signature_valid(certificate.public_key())  # type: ignore[arg-type]


def test_a_crl_that_fails_lint_is_never_signed(linter: Linter) -> None:
    events: list[str] = []
    key = counting(events)
    plain = Signer(key, linter)
    certificate = plain.sign(plain.prepare(ca_template(key)))
    events.clear()
    refusing = Signer(key, RecordingLinter(linter, events, refuse=True))
    # Nothing in a CRL comes from a caller: a finding is kubeca's own bug, so INTERNAL.
    with pytest.raises(InternalError, match="CRL would not pass lint"):
        refusing.prepare_crl(crl_template(certificate))
    assert events == ["lint-crl"]


def test_a_malformed_crl_is_refused_by_the_real_linter(linter: Linter) -> None:
    events: list[str] = []
    key = counting(events)
    signer = Signer(key, linter)
    certificate = signer.sign(signer.prepare(ca_template(key)))
    events.clear()
    # RFC 5280 5.2.3: a conforming CRL issuer MUST include the CRL number.
    builder = crl_template(certificate)
    no_number = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(certificate.subject)
        .last_update(NOW.replace(microsecond=0))
        .next_update(NOW.replace(microsecond=0) + timedelta(days=7))
    )
    signer.prepare_crl(builder)  # the well-formed one passes
    with pytest.raises(InternalError, match="CRL would not pass lint"):
        signer.prepare_crl(no_number)
    assert events == []


def test_a_signature_that_does_not_verify_is_never_returned(linter: Linter) -> None:
    """A faulty HSM, or a token swapped under the service (same labels, other keys)."""

    class SwappedKey(HookedKey):
        def public_key(self) -> ec.EllipticCurvePublicKey:
            return p256_key().public_key()  # what the CA certificate says the key is

    signer = Signer(SwappedKey(ec.generate_private_key(ec.SECP256R1())), linter)
    prepared = signer.prepare(ca_template(p256_key()))
    with pytest.raises(Unavailable, match="do not match the CA certificates"):
        signer.sign(prepared)


def test_sign_bytes_is_a_checked_bare_signature(linter: Linter) -> None:
    events: list[str] = []
    key = counting(events)
    signature = Signer(key, linter).sign_bytes(b"kubeca-audit-checkpoint\n1")
    verify_signature(key.public_key(), signature, b"kubeca-audit-checkpoint\n1")
    assert events == ["ca-sign"]


def test_a_leaf_template_is_refused_by_lint_before_any_signature(linter: Linter) -> None:
    events: list[str] = []
    key = counting(events)
    signer = Signer(key, linter)
    leaf = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "ca")]))
        .public_key(leaf.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("bad..name")]), False)
    )
    with pytest.raises(InvalidArgument, match="would not pass lint"):
        signer.prepare(builder)
    assert events == []


# --- what is signed is what was linted --------------------------------------------------


class KeepingLinter(Linter):
    """The real linter, keeping each copy it passed."""

    def __init__(self, inner: Linter) -> None:
        self._inner = inner
        self.copies: list[x509.Certificate | x509.CertificateRevocationList] = []

    def check(self, builder: x509.CertificateBuilder, ca_key: CAPublicKey) -> x509.Certificate:
        copy = self._inner.check(builder, ca_key)
        self.copies.append(copy)
        return copy

    def check_crl(
        self, builder: x509.CertificateRevocationListBuilder, ca_key: CAPublicKey
    ) -> x509.CertificateRevocationList:
        copy = self._inner.check_crl(builder, ca_key)
        self.copies.append(copy)
        return copy


CA_KEYS = {
    "p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "rsa2048": lambda: rsa.generate_private_key(65537, 2048),
    "rsa4096": lambda: rsa.generate_private_key(65537, 4096),
}


@pytest.mark.parametrize("kind", sorted(CA_KEYS))
def test_the_ca_key_signs_the_very_bytes_that_were_linted(
    kind: str, linter: Linter, tmp_path: Path
) -> None:
    key = CA_KEYS[kind]()
    keeping = KeepingLinter(linter)
    signer = Signer(key, keeping)
    certificate = signer.sign(signer.prepare(ca_template(key)))
    crl = signer.sign_crl(signer.prepare_crl(crl_template(certificate)))
    linted_certificate, linted_crl = keeping.copies
    assert isinstance(linted_certificate, x509.Certificate)
    assert isinstance(linted_crl, x509.CertificateRevocationList)
    assert certificate.tbs_certificate_bytes == linted_certificate.tbs_certificate_bytes
    assert crl.tbs_certlist_bytes == linted_crl.tbs_certlist_bytes
    # The copy held a placeholder; the result holds the key's signature, and nothing else
    # of the encoding moved.
    assert certificate.signature != linted_certificate.signature
    assert certificate.signature_algorithm_oid == linted_certificate.signature_algorithm_oid
    certificate.verify_directly_issued_by(certificate)
    assert crl.is_signature_valid(key.public_key())
    # And a verifier that is not cryptography agrees.
    (tmp_path / "ca.pem").write_bytes(certificate.public_bytes(Encoding.PEM))
    (tmp_path / "crl.pem").write_bytes(crl.public_bytes(Encoding.PEM))
    for command in (
        ["openssl", "verify", "-CAfile", "ca.pem", "ca.pem"],
        ["openssl", "crl", "-in", "crl.pem", "-CAfile", "ca.pem", "-noout"],
    ):
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "OK" in done.stdout + done.stderr


@pytest.mark.parametrize("size", [0, 1, 0x7E, 0x7F, 0x80, 0xFF, 0x100, 0x10000])
def test_with_signature_replaces_only_the_signature(size: int, linter: Linter) -> None:
    """Signatures whose DER lengths take every form (short, one byte, two, three)."""
    key = p256_key()
    copy = linter.check(ca_template(key), key.public_key())
    signature = (bytes(range(256)) * (size // 256 + 1))[:size]
    spliced = x509.load_der_x509_certificate(with_signature(copy, signature))
    assert spliced.signature == signature
    assert spliced.tbs_certificate_bytes == copy.tbs_certificate_bytes
    assert spliced.signature_algorithm_oid == copy.signature_algorithm_oid
