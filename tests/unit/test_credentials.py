"""Operator credentials are revocable (issue 10, defect 4): a revoked client
certificate is refused at every call, within the refresh interval, in any worker that
shares the store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from kubeca_client.errors import Unauthenticated
from kubeca_server.config import Grant
from kubeca_server.issuance.credentials import RevokedCredentials
from kubeca_server.issuance.inventory import visible
from kubeca_server.issuance.model import OPERATOR, TOKEN, Caller
from kubeca_server.store import CertificateRow
from kubeca_server.store.memory import MemoryStore

from tests.unit.conftest import grant


def _row(serial: str, authority: str = "kubeca-service-ca") -> CertificateRow:
    now = datetime.now(UTC)
    return CertificateRow(
        serial=serial,
        authority=authority,
        profile="kubeca-operator" if authority == "kubeca-service-ca" else "admin",
        subject="CN=ops",
        sans=(),
        public_key_sha256="00",
        fingerprint_sha256="11",
        not_before=now,
        not_after=now + timedelta(days=30),
        caller="test",
        request_fingerprint=f"credentials:{serial}",
        certificate_pem="",
    )


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_revoked_credential_is_refused_once_the_cache_is_older_than_its_interval() -> None:
    store = MemoryStore()
    with store.unit() as unit:
        unit.inventory.add(_row("abc1"))
        unit.inventory.add(_row("abc2"))
    ticks = Ticks()
    check = RevokedCredentials(store, refresh_seconds=2.0, monotonic=ticks)
    caller = Caller("ops", kind=OPERATOR, serial="abc1")
    check.check(caller)
    with store.unit() as unit:
        assert unit.inventory.revoke("abc1", datetime.now(UTC), "key_compromise")
    ticks.now += 1.0
    check.check(caller)  # within the interval: the set read a second ago
    ticks.now += 1.5
    with pytest.raises(Unauthenticated, match=r"abc1.*was revoked"):
        check.check(caller)
    check.check(Caller("ops", kind=OPERATOR, serial="abc2"))
    check.check(Caller("token:x", kind=TOKEN, token="x.y"))


def test_only_grants_that_may_revoke_see_operator_credentials() -> None:
    revoker: Grant = grant(revoke=True)
    reader: Grant = grant(revoke=False)
    assert visible(revoker, _row("1"))
    assert not visible(reader, _row("1"))
    assert visible(reader, _row("2", authority="kubernetes-ca"))
