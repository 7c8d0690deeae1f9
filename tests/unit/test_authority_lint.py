"""The order of operations: lint a throwaway-signed copy, and only then let the CA key sign."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from kubeca_client.errors import InvalidArgument
from kubeca_server.audit import AuditLog
from kubeca_server.authorities import CertificateAuthority
from kubeca_server.authority import Authority, Caller, IssueRequest
from kubeca_server.keys import CAPrivateKey
from kubeca_server.lint import Linter

from tests.unit.conftest import GRANTS, CASet
from tests.unit.helpers import NODE_PARAMS, make_csr, read_audit


class CountingKey(ec.EllipticCurvePrivateKey):
    """A CA key that records each signature it makes, as an HSM key object would."""

    def __init__(self, inner: ec.EllipticCurvePrivateKey, events: list[str]) -> None:
        self._inner = inner
        self._events = events

    def sign(self, data: Any, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        self._events.append("ca-sign")
        return self._inner.sign(data, signature_algorithm)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._inner.public_key()

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._inner.curve

    @property
    def key_size(self) -> int:
        return self._inner.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise TypeError("sign-only")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise TypeError("not extractable")

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        raise TypeError("not extractable")

    def __copy__(self) -> CountingKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> CountingKey:
        return self


class RecordingLinter(Linter):
    """The real linter, noting when it runs; or one that refuses everything."""

    def __init__(self, inner: Linter, events: list[str], *, refuse: bool = False) -> None:
        self._inner = inner
        self._events = events
        self._refuse = refuse

    def check(self, builder: x509.CertificateBuilder, ca_key: CAPrivateKey) -> None:
        self._events.append("lint")
        if self._refuse:
            raise InvalidArgument("the certificate would not pass lint: test says no")
        self._inner.check(builder, ca_key)


def counting_authority(
    ca_set: CASet, linter: Linter, audit: AuditLog, events: list[str]
) -> Authority:
    authorities = dict(ca_set.authorities)
    for name, ca in authorities.items():
        assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
        authorities[name] = CertificateAuthority(name, ca.certificate, CountingKey(ca.key, events))
    return Authority(authorities, ca_set.config.leaf, audit, linter, grants=GRANTS)


def test_lint_runs_before_the_one_ca_signature(
    ca_set: CASet, linter: Linter, audit: AuditLog
) -> None:
    events: list[str] = []
    authority = counting_authority(ca_set, RecordingLinter(linter, events), audit, events)
    issued = authority.issue(
        Caller("test-caller"), IssueRequest("apiserver", make_csr(), NODE_PARAMS)
    )
    assert events == ["lint", "ca-sign"]
    issued.certificate.verify_directly_issued_by(issued.authority.certificate)


def test_lint_refusal_means_the_ca_key_never_signs(
    ca_set: CASet, linter: Linter, audit: AuditLog, audit_path: Path
) -> None:
    events: list[str] = []
    refusing = RecordingLinter(linter, events, refuse=True)
    authority = counting_authority(ca_set, refusing, audit, events)
    with pytest.raises(InvalidArgument, match="would not pass lint"):
        authority.issue(Caller("test-caller"), IssueRequest("admin", make_csr()))
    assert events == ["lint"]
    (record,) = read_audit(audit_path)
    assert record["outcome"] == "refused"


def test_a_name_pkilint_refuses_is_refused_unsigned(
    ca_set: CASet, linter: Linter, audit: AuditLog, audit_path: Path
) -> None:
    # "node.1" is a DNS-1123 subdomain, so the parameter parser lets it through, but a
    # numeric top-level label is not a valid domain name: pkilint refuses it.
    events: list[str] = []
    authority = counting_authority(ca_set, linter, audit, events)
    params = dict(NODE_PARAMS, extra_sans="node.1")
    with pytest.raises(InvalidArgument, match=r"would not pass lint.*node\.1"):
        authority.issue(Caller("test-caller"), IssueRequest("etcd-server", make_csr(), params))
    assert events == []
    (record,) = read_audit(audit_path)
    assert record["outcome"] == "refused"
    assert "lint" in record["reason"]
