"""ca/lint.py: pkilint before the real signature; the single-label DNS allowance stays
narrow; CRLs are linted too."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from kubeca_client.errors import InvalidArgument
from kubeca_server.ca.lint import Finding, Linter

from tests.unit.conftest import CALLER, CASet, World, issue
from tests.unit.helpers import NODE_PARAMS, p256_key, subject


def leaf_builder(
    sans: Sequence[x509.GeneralName] | None = None, serial: int = 0x1234_5678_9ABC_DEF0_1234
) -> x509.CertificateBuilder:
    """A well-formed leaf template; ``sans`` adds a SAN extension (possibly empty)."""
    now = datetime.now(UTC)
    ca_key = p256_key()
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject("leaf"))
        .issuer_name(subject("ca"))
        .public_key(leaf_key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder


def der(builder: x509.CertificateBuilder) -> bytes:
    return builder.sign(p256_key(), hashes.SHA256()).public_bytes(Encoding.DER)


def codes(findings: list[Finding]) -> list[str]:
    return [f.code for f in findings]


def test_well_formed_certificate_has_no_errors(linter: Linter) -> None:
    assert linter.errors(der(leaf_builder([x509.DNSName("node.example.com")]))) == []


def test_issued_certificates_lint_clean(linter: Linter, world: World) -> None:
    for profile, params in [("apiserver", NODE_PARAMS), ("etcd-peer", NODE_PARAMS), ("admin", {})]:
        issued = issue(world, profile, params)
        assert linter.errors(issued.certificate.public_bytes(Encoding.DER)) == []


def test_ca_certificates_lint_clean(linter: Linter, ca_set: CASet) -> None:
    for ca in ca_set.authorities.values():
        assert linter.errors(ca.issuing.certificate.public_bytes(Encoding.DER)) == []


def test_published_crls_lint_clean(linter: Linter, world: World) -> None:
    revoked = issue(world, "etcd-healthcheck-client")
    world.core.inventory.revoke(CALLER, revoked.serial_hex, "key_compromise")
    for name in ("kubernetes-ca", "etcd-ca", "front-proxy-ca"):
        published = world.core.crls.publish(name)
        errors = [f for f in linter.crl_findings(published.der) if f.severity in {"FATAL", "ERROR"}]
        assert errors == [], name


@pytest.mark.parametrize("name", ["kubernetes", "localhost"])
def test_single_label_dns_san_is_allowed(linter: Linter, name: str) -> None:
    data = der(leaf_builder([x509.DNSName(name), x509.DNSName("a.example")]))
    # pkilint does report it; the linter accepts exactly that finding.
    assert "pkix.invalid_domain_name_syntax" in codes(linter.findings(data))
    assert linter.errors(data) == []


@pytest.mark.parametrize("name", ["*.apps.example.com", "*.example.org"])
def test_wildcard_dns_san_is_allowed(linter: Linter, name: str) -> None:
    assert linter.errors(der(leaf_builder([x509.DNSName(name)]))) == []


def test_single_label_allowance_does_not_hide_another_bad_name(linter: Linter) -> None:
    data = der(leaf_builder([x509.DNSName("kubernetes"), x509.DNSName("bad..name")]))
    errors = linter.errors(data)
    assert codes(errors) == ["pkix.invalid_domain_name_syntax"]
    assert "bad..name" in errors[0].message


@pytest.mark.parametrize(
    "name",
    [
        "bad..name",
        "kubernetes-",
        "KUBERNETES",
        "",
        "has space",
        "*.bad..name",
        "node.1",
        "*.*.example.com",
        # Not single-label names, though the text after the last ": " in pkilint's message
        # (Invalid domain name syntax: "<name>") looks like one.
        "evil: kubernetes",
        'x": "localhost',
    ],
)
def test_invalid_dns_name_is_an_error(linter: Linter, name: str) -> None:
    errors = linter.errors(der(leaf_builder([x509.DNSName(name)])))
    assert codes(errors) == ["pkix.invalid_domain_name_syntax"]


def test_empty_san_extension_is_an_error(linter: Linter) -> None:
    errors = linter.errors(der(leaf_builder([])))
    assert errors
    assert {e.severity for e in errors} <= {"FATAL", "ERROR"}


def test_check_refuses_a_bad_template_before_signing(linter: Linter) -> None:
    with pytest.raises(InvalidArgument, match=r"would not pass lint.*bad\.\.name"):
        linter.check(leaf_builder([x509.DNSName("bad..name")]), p256_key().public_key())


def test_check_accepts_a_good_template(linter: Linter) -> None:
    linter.check(leaf_builder([x509.DNSName("kubernetes")]), p256_key().public_key())


def test_finding_renders_severity_code_and_message() -> None:
    assert str(Finding("ERROR", "x.y", "z")) == "ERROR x.y: z"
    assert str(Finding("INFO", "x.y", "")) == "INFO x.y"
