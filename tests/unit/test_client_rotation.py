"""What `kubeca renew` takes from a rotation: leaves of an old generation, and
kubeconfigs whose CA data is not the current bundle, are due whatever their expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from kubeca_client.kubeconfig import Kubeconfig
from kubeca_client.layout import CONTROL_PLANE_KUBECONFIGS
from kubeca_client.slots import Slot, signed_by_old_generation

from tests.unit.helpers import p256_key


def _leaf(authority_key_id: bytes | None) -> x509.Certificate:
    key = p256_key()
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    if authority_key_id is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier(authority_key_id, None, None), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def test_a_leaf_of_another_generation_is_due() -> None:
    leaf = _leaf(bytes.fromhex("aa" * 20))
    assert signed_by_old_generation(leaf, "bb" * 20)
    assert not signed_by_old_generation(leaf, "aa" * 20)
    assert not signed_by_old_generation(leaf, "")  # a server that does not say
    assert not signed_by_old_generation(_leaf(None), "bb" * 20)


def test_a_kubeconfig_whose_ca_data_is_not_the_bundle_is_due(tmp_path: Path) -> None:
    admin = CONTROL_PLANE_KUBECONFIGS[0]
    slot = Slot(admin.name, admin.profile, admin.authority, {}, kubeconfig=admin)
    config = Kubeconfig("https://127.0.0.1:6443", "kubernetes-admin", b"OLD", b"c", b"k")
    admin.path(tmp_path).write_bytes(config.render())
    assert slot.stale_trust(tmp_path, "OLD+NEW")
    assert not slot.stale_trust(tmp_path, "OLD")
    assert not slot.stale_trust(tmp_path, "")  # a server that sends no bundle
