"""Defects found in review, each pinned by a test: token lifetimes, CRL ordering, and
inventory rows that vanish behind the chain's back."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from kubeca_client.errors import PermissionDenied
from kubeca_server.audit import AuditLog
from kubeca_server.authority import TOKEN, Authority, Caller, IssueRequest
from kubeca_server.crl import CRLPublisher
from kubeca_server.ledger import ChainRow, InventoryEntry, canonical, link_hash, verify
from kubeca_server.lint import Linter
from kubeca_server.store import SQLiteStore
from kubeca_server.token_admin import TokenAdmin
from kubeca_server.tokens import TokenRequest

from tests.unit.conftest import EVERYTHING, CASet
from tests.unit.helpers import make_csr

YEARISH = timedelta(days=300)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "kubeca.db")
    yield opened
    opened.close()


@pytest.fixture
def audit(tmp_path: Path, store: SQLiteStore) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.log", store)
    yield log
    log.close()


def test_a_token_cannot_outlive_its_creators_lifetime_ceiling(
    ca_set: CASet, store: SQLiteStore, audit: AuditLog, linter: Linter
) -> None:
    short = dataclasses.replace(EVERYTHING, identity="short", max_lifetime=timedelta(days=1))
    grants = {"short": short}
    admin = TokenAdmin(store, audit, grants)
    token, _ = admin.create(
        Caller("short"), TokenRequest(["kubelet-client"], "worker-1", [], timedelta(hours=1))
    )
    authority = Authority(
        ca_set.authorities,
        ca_set.config.leaf,
        audit,
        linter,
        grants=grants,
        store=store,
    )
    node = Caller(f"token:{token[:6]}", kind=TOKEN, token=token)
    params = {"node_name": "worker-1"}
    with pytest.raises(PermissionDenied, match="allows lifetimes up to 86400s"):
        authority.issue(node, IssueRequest("kubelet-client", make_csr(), params, YEARISH))
    issued = authority.issue(node, IssueRequest("kubelet-client", make_csr(), params))
    cert = issued.certificate
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=1, minutes=5)


def test_a_crl_never_replaces_a_newer_one_on_disk(
    ca_set: CASet, store: SQLiteStore, audit: AuditLog, tmp_path: Path
) -> None:
    publisher = CRLPublisher(ca_set.authorities, store, audit, tmp_path / "crl")
    first = publisher.publish("etcd-ca")
    second = publisher.publish("etcd-ca")
    assert second.number > first.number
    # A slower worker's older CRL arrives last: it must not win.
    publisher._write_if_newer("etcd-ca", first.der, first.number)
    on_disk = x509.load_der_x509_crl(publisher.path("etcd-ca").read_bytes())
    assert on_disk.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == (
        second.number
    )


def test_a_crl_behind_the_databases_number_is_republished(
    ca_set: CASet, store: SQLiteStore, audit: AuditLog, tmp_path: Path
) -> None:
    publisher = CRLPublisher(ca_set.authorities, store, audit, tmp_path / "crl")
    published = publisher.publish("etcd-ca")
    store.next_crl("etcd-ca")  # a publish that allocated a number and never wrote
    assert publisher.current("etcd-ca").number > published.number + 1


def test_a_certificate_issued_in_the_chain_but_gone_from_the_inventory_is_caught() -> None:
    body = canonical({"event": "certificate.issued", "serial": "0a", "seq": 1})
    rows = [ChainRow(1, body, "0" * 64, link_hash("0" * 64, body))]
    key = ec.generate_private_key(ec.SECP256R1())
    problems = verify(rows, [], [], key.public_key()).problems
    assert problems == [
        "certificate 0a was issued (per the chain) but is missing from the inventory"
    ]


def test_an_inventory_pem_that_is_not_its_recorded_certificate_is_caught() -> None:
    body = canonical(
        {"event": "certificate.issued", "serial": "0a", "fingerprint_sha256": "fp", "seq": 1}
    )
    rows = [ChainRow(1, body, "0" * 64, link_hash("0" * 64, body))]
    key = ec.generate_private_key(ec.SECP256R1())
    entry = InventoryEntry("0a", 1, "fp", False, pem_fingerprint_sha256="other")
    assert verify(rows, [], [entry], key.public_key()).problems == [
        "certificate 0a in the inventory is not the one record 1 issued (fingerprints differ)"
    ]
