"""Rotating a CA (or a token-signing key) in three staged steps, without an outage.

1. ``begin``: a new key generation in the token and its self-signed CA certificate
   (plus a cross-certificate signed by the issuing generation), in state ``trusted``:
   the trust bundle holds old and new, the old generation still issues.
2. ``switch``: the new generation issues; the old stays trusted (and keeps its CRL).
3. ``finish``: the old generation is retired: neither trusted nor published. Refused
   while the inventory holds unexpired, unrevoked leaves it signed, unless forced.

Every step works on the store's generation rows for any authority name (the CAs and,
once it is modelled as generations, the service-account key), is idempotent (a step
already taken answers "nothing changed"), commits its audit record and its state change
in one transaction, and refuses with ``FailedPrecondition`` when the step before it is
missing. Running workers pick the change up from the store (``ca.registry``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from kubeca_client.errors import ConfigError, FailedPrecondition, NotFound
from kubeca_client.keys import KeyAlgorithm, algorithm_of

from kubeca_server.ca.authority import key_identifier
from kubeca_server.ca.lifecycle import generation_rows, key_label
from kubeca_server.ca.lint import Linter
from kubeca_server.ca.signer import Signer
from kubeca_server.config import ServerConfig
from kubeca_server.keys import CAPrivateKey, KeyBackend
from kubeca_server.ledger.audit import Entry, Ledger
from kubeca_server.profiles import Issuer, build_ca
from kubeca_server.serials import new_serial
from kubeca_server.store.changes import AddGeneration, SetGenerationStates
from kubeca_server.store.records import (
    CertificateRow,
    GenerationRow,
    GenerationState,
    InventoryCursor,
    InventoryQuery,
    KeyKind,
    Provenance,
)
from kubeca_server.store.roles import Inventory

Clock = Callable[[], datetime]
DEFAULT_LIFETIME = timedelta(days=3650)


@dataclass(frozen=True)
class Stage:
    """Where one authority's rotation stands, read from its generation rows."""

    issuing: GenerationRow
    pending: tuple[GenerationRow, ...]  # trusted, newer than the issuing: begun, not switched
    previous: tuple[GenerationRow, ...]  # trusted, older than the issuing: switched, not finished

    @classmethod
    def of(cls, name: str, rows: Sequence[GenerationRow]) -> Stage:
        issuing = [r for r in rows if r.state is GenerationState.ISSUING]
        if len(issuing) != 1:
            raise ConfigError(
                f"{name} has {len(issuing)} issuing generations in the store, not one"
            )
        current = issuing[0]
        trusted = [r for r in rows if r.state is GenerationState.TRUSTED]
        return cls(
            current,
            tuple(r for r in trusted if r.generation > current.generation),
            tuple(r for r in trusted if r.generation < current.generation),
        )


def certificate_of(row: GenerationRow) -> x509.Certificate:
    return x509.load_pem_x509_certificate(row.certificate_pem.encode())


def key_id_hex(row: GenerationRow) -> str:
    """The generation's SubjectKeyIdentifier, as the inventory records a leaf's issuer."""
    return key_identifier(certificate_of(row)).hex() if row.kind is KeyKind.CA else ""


def _common_name(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _numbers(rows: Sequence[GenerationRow]) -> str:
    return ", ".join(str(r.generation) for r in rows)


INVENTORY_PAGE = 1000


def unrenewed(
    inventory: Inventory, name: str, old_key_ids: set[str], issuing_key_id: str, now: datetime
) -> dict[str, int]:
    """Unexpired, unrevoked leaves signed by an old generation, by profile, leaving out
    those the issuing generation has re-issued since (same profile, subject and SANs):
    a renewed certificate's predecessor need not be waited out or revoked."""
    old: list[CertificateRow] = []
    renewed: dict[tuple[str, str, tuple[str, ...]], datetime] = {}
    cursor = InventoryCursor(now, "")  # pages from here hold only unexpired rows
    while page := inventory.page(InventoryQuery(authority=name), cursor, INVENTORY_PAGE):
        cursor = InventoryCursor(page[-1].not_after, page[-1].serial)
        for row in page:
            if row.revoked_at is not None:
                continue
            if row.issuer_key_id in old_key_ids:
                old.append(row)
            elif row.issuer_key_id == issuing_key_id:
                identity = (row.profile, row.subject, row.sans)
                renewed[identity] = max(row.not_before, renewed.get(identity, row.not_before))
    left: dict[str, int] = {}
    for row in old:
        since = renewed.get((row.profile, row.subject, row.sans))
        if since is None or since < row.not_before:
            left[row.profile] = left.get(row.profile, 0) + 1
    return left


class Rotation:
    """The three steps, for any authority the store holds generations of."""

    def __init__(
        self,
        config: ServerConfig,
        backend: KeyBackend,
        ledger: Ledger,
        linter: Linter,
        clock: Clock,
    ) -> None:
        self._config = config
        self._backend = backend
        self._ledger = ledger
        self._linter = linter
        self._clock = clock

    def _rows(self, name: str) -> list[GenerationRow]:
        rows = generation_rows(self._ledger.store).get(name, [])
        if not rows:
            known = ", ".join(sorted(generation_rows(self._ledger.store)))
            raise NotFound(f"no authority named {name[:64]!r} in the store (known: {known})")
        return rows

    def _key(self, row: GenerationRow) -> CAPrivateKey:
        key = self._backend.find_key(row.key_label)
        if key is None:
            raise ConfigError(
                f"{row.authority}: generation {row.generation}'s key {row.key_label!r} is not "
                "in the token"
            )
        return key

    def _new_key(self, name: str, label: str, algorithm: KeyAlgorithm) -> tuple[CAPrivateKey, str]:
        """A fresh key under ``label``; one already there is what an interrupted begin
        made before it could record it, and is taken (never a second key)."""
        existing = self._backend.find_key(label)
        if existing is None:
            return self._backend.create_key(label, algorithm), "created a new key in the HSM"
        return existing, "took the key an interrupted begin left in the HSM"

    def begin(self, name: str) -> str:
        rows = self._rows(name)
        stage = Stage.of(name, rows)
        if stage.pending:
            return (
                f"{name}: rotation already begun: generation {_numbers(stage.pending)} is "
                "trusted and waits to issue; nothing changed"
            )
        if stage.previous:
            raise FailedPrecondition(
                f"{name}: a rotation is under way: generation {_numbers(stage.previous)} is "
                f"still trusted beside the issuing {stage.issuing.generation}; finish it first "
                f"(kubeca-server ca rotate finish --authority {name})"
            )
        now = self._clock()
        number = max(r.generation for r in rows) + 1
        label = key_label(name, number)
        old_key = self._key(stage.issuing)
        authority = self._config.authorities.get(name)
        algorithm = authority.key_algorithm if authority else algorithm_of(old_key)
        lifetime = authority.lifetime if authority else DEFAULT_LIFETIME
        key, how = self._new_key(name, label, algorithm)
        facts = self._backend.key_facts(label)
        provenance = (
            Provenance.GENERATED if facts is None or facts.generated_inside else Provenance.IMPORTED
        )
        public_pem = (
            key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
        )
        certificate_pem = cross_pem = ""
        details: dict[str, object] = {}
        if stage.issuing.kind is KeyKind.CA:
            old = certificate_of(stage.issuing)
            common_name = _common_name(old)
            signer = Signer(key, self._linter)
            certificate = signer.sign(
                signer.prepare(
                    build_ca(common_name, signer.public_key, new_serial(), now, lifetime)
                )
            )
            old_signer = Signer(old_key, self._linter)
            old_issuer = Issuer(old.subject, key_identifier(old), old.not_valid_after_utc)
            cross = old_signer.sign(
                old_signer.prepare(
                    build_ca(
                        common_name, signer.public_key, new_serial(), now, lifetime, old_issuer
                    )
                )
            )
            certificate_pem = certificate.public_bytes(Encoding.PEM).decode()
            cross_pem = cross.public_bytes(Encoding.PEM).decode()
            details = {
                "serial": format(certificate.serial_number, "x"),
                "not_after": certificate.not_valid_after_utc.isoformat(),
                "key_id": key_identifier(certificate).hex(),
                "cross_serial": format(cross.serial_number, "x"),
            }
        row = GenerationRow(
            name,
            number,
            label,
            certificate_pem,
            GenerationState.TRUSTED,
            provenance,
            now,
            stage.issuing.kind,
            public_pem,
            cross_pem,
        )
        self._ledger.commit(
            Entry(
                "ca.rotation.begun",
                {
                    "authority": name,
                    "generation": number,
                    "issuing_generation": stage.issuing.generation,
                    "key_label": label,
                    "provenance": provenance.value,
                    "how": how,
                    **details,
                },
                "warning",
                change=AddGeneration(row),
            )
        )
        return (
            f"{name}: generation {number} begun ({how}); the trust bundle now holds "
            f"generations {stage.issuing.generation} and {number}, and {stage.issuing.generation} "
            "still issues. Distribute the bundle to everything that trusts this CA, then run "
            f"'kubeca-server ca rotate switch --authority {name}'"
        )

    def switch(self, name: str) -> str:
        stage = Stage.of(name, self._rows(name))
        if not stage.pending:
            if stage.previous:
                return (
                    f"{name}: already switched: generation {stage.issuing.generation} issues; "
                    "nothing changed"
                )
            raise FailedPrecondition(
                f"{name}: no new generation to switch to; run "
                f"'kubeca-server ca rotate begin --authority {name}' first"
            )
        new = stage.pending[-1]
        old = stage.issuing
        if new.kind is KeyKind.CA and certificate_of(new).not_valid_after_utc <= self._clock():
            raise FailedPrecondition(
                f"{name}: generation {new.generation}'s certificate expired; nothing switched"
            )
        self._ledger.commit(
            Entry(
                "ca.rotation.switched",
                {"authority": name, "issuing": new.generation, "previous": old.generation},
                "warning",
                change=SetGenerationStates(
                    name,
                    (
                        (old.generation, GenerationState.TRUSTED),
                        (new.generation, GenerationState.ISSUING),
                    ),
                    self._clock(),
                ),
            )
        )
        return (
            f"{name}: generation {new.generation} issues now; {old.generation} stays trusted. "
            f"Renew every leaf (kubeca renew), then run "
            f"'kubeca-server ca rotate finish --authority {name}'"
        )

    def finish(self, name: str, force: bool = False) -> str:
        stage = Stage.of(name, self._rows(name))
        if stage.pending:
            raise FailedPrecondition(
                f"{name}: generation {_numbers(stage.pending)} has not been switched to; run "
                f"'kubeca-server ca rotate switch --authority {name}' first"
            )
        if not stage.previous:
            return f"{name}: no older generation is trusted; nothing changed"
        now = self._clock()
        with self._ledger.store.unit(read_only=True) as unit:
            left = unrenewed(
                unit.inventory,
                name,
                {key_id_hex(r) for r in stage.previous} - {""},
                key_id_hex(stage.issuing),
                now,
            )
        outstanding = sum(left.values())
        if outstanding and not force:
            listing = ", ".join(f"{profile}: {count}" for profile, count in sorted(left.items()))
            raise FailedPrecondition(
                f"{name}: generation {_numbers(stage.previous)} signed {outstanding} "
                f"unexpired, unrevoked certificates not yet renewed by generation "
                f"{stage.issuing.generation} ({listing}); renew them (kubeca renew), revoke "
                "them, or pass --force to stop trusting them anyway"
            )
        self._ledger.commit(
            Entry(
                "ca.rotation.finished",
                {
                    "authority": name,
                    "retired": [r.generation for r in stage.previous],
                    "issuing": stage.issuing.generation,
                    "forced": force,
                    "outstanding": outstanding,
                },
                "warning",
                change=SetGenerationStates(
                    name,
                    tuple((r.generation, GenerationState.RETIRED) for r in stage.previous),
                    now,
                ),
            )
        )
        note = (
            f" ({outstanding} certificates it signed are no longer trusted)" if outstanding else ""
        )
        return (
            f"{name}: generation {_numbers(stage.previous)} retired{note}; only generation "
            f"{stage.issuing.generation} is trusted and published. Distribute the bundle again "
            "so the old CA leaves every trust store"
        )
