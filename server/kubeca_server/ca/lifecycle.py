"""Creating each CA once, and loading every CA with its generations at start.

A generation's certificate and state live in the store (so replicas share them), its
key in the HSM under the generation's label. ``initialize`` never replaces a key;
``load`` refuses to start when a certificate does not belong to its key. Each CA's
trust bundle is also written to state_dir/ca/<name>.crt for operators to read; nothing
in kubeca reads those files back, except once: a state directory from before CA
generations moved into the store is adopted from them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from kubeca_client.authorities import COMMON_NAMES
from kubeca_client.errors import ConfigError
from kubeca_client.files import atomic_write
from kubeca_client.keys import algorithm_of, spki_der

from kubeca_server.ca.authority import CertificateAuthority, Generation
from kubeca_server.ca.lint import Linter
from kubeca_server.ca.registry import CARegistry
from kubeca_server.ca.signer import Signer
from kubeca_server.config import AuthorityConfig, ServerConfig
from kubeca_server.keys import CAPrivateKey, KeyBackend
from kubeca_server.ledger.audit import Entry, Ledger
from kubeca_server.profiles import build_ca
from kubeca_server.serials import new_serial
from kubeca_server.store.changes import AddGeneration
from kubeca_server.store.records import GenerationRow, GenerationState, KeyKind, Provenance
from kubeca_server.store.roles import Store

Clock = Callable[[], datetime]


def key_label(authority: str, generation: int) -> str:
    """The token label of a generation's key: generation 1 keeps the first wave's."""
    return f"kubeca/{authority}" if generation == 1 else f"kubeca/{authority}/{generation}"


def _same_key(certificate: x509.Certificate, key: CAPrivateKey) -> bool:
    return spki_der(certificate) == spki_der(key)


def _check_is_ca(name: str, certificate: x509.Certificate) -> None:
    try:
        basic = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        basic, usage = None, None
    if basic is None or usage is None or not basic.ca or not usage.key_cert_sign:
        raise ConfigError(f"{name}: the certificate in the store is not a CA")


def self_signed(
    name: str, key: CAPrivateKey, lifetime: timedelta, linter: Linter, now: datetime
) -> x509.Certificate:
    """A new root for ``key``, linted then signed in the HSM like everything else."""
    signer = Signer(key, linter)
    builder = build_ca(COMMON_NAMES[name], signer.public_key, new_serial(), now, lifetime)
    return signer.sign(signer.prepare(builder))


def _legacy_certificate(config: ServerConfig, name: str) -> x509.Certificate | None:
    """The certificate a first-wave state directory kept in a file."""
    path = config.ca_dir / f"{name}.crt"
    if not path.exists():
        return None
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate") from None


def generation_rows(store: Store) -> dict[str, list[GenerationRow]]:
    with store.unit(read_only=True) as unit:
        rows = unit.generations.all()
    by_name: dict[str, list[GenerationRow]] = {}
    for row in rows:
        by_name.setdefault(row.authority, []).append(row)
    return by_name


def record_generation(ledger: Ledger, row: GenerationRow, how: str) -> None:
    """A new generation enters the store with its audit record, in one transaction."""
    certificate = x509.load_pem_x509_certificate(row.certificate_pem.encode())
    ledger.commit(
        Entry(
            "ca.generation_added",
            {
                "authority": row.authority,
                "generation": row.generation,
                "key_label": row.key_label,
                "state": row.state.value,
                "provenance": row.provenance.value,
                "how": how,
                "serial": format(certificate.serial_number, "x"),
                "not_after": certificate.not_valid_after_utc.isoformat(),
                "subject": certificate.subject.rfc4514_string(),
            },
            "warning",
            change=AddGeneration(row),
        )
    )


def _init_one(
    config: ServerConfig,
    authority: AuthorityConfig,
    existing: Sequence[GenerationRow],
    backend: KeyBackend,
    ledger: Ledger,
    linter: Linter,
    now: datetime,
) -> str:
    name = authority.name
    if existing:
        for row in existing:
            key = backend.find_key(row.key_label)
            if key is None:
                raise ConfigError(
                    f"{name}: generation {row.generation} needs the HSM key "
                    f"{row.key_label!r}, which the token does not hold"
                )
            certificate = x509.load_pem_x509_certificate(row.certificate_pem.encode())
            if not _same_key(certificate, key):
                raise ConfigError(
                    f"{name}: the certificate of generation {row.generation} does not match "
                    f"the HSM key {row.key_label!r}"
                )
        line = f"{name}: already initialized, nothing changed"
        issuing = next(r for r in existing if r.state is GenerationState.ISSUING)
        kept_key = backend.find_key(issuing.key_label)
        assert kept_key is not None
        kept = algorithm_of(kept_key)
        if kept is not authority.key_algorithm:
            line += (
                f" (its key is {kept.value}, the config asks {authority.key_algorithm.value}; "
                "init never replaces a key)"
            )
        return line
    label = key_label(name, 1)
    key = backend.find_key(label)
    legacy = _legacy_certificate(config, name)
    if key is None and legacy is not None:
        raise ConfigError(
            f"{name}: {config.ca_dir / (name + '.crt')} exists but the token has no key "
            f"labelled {label!r}; refusing to make a new CA under an existing certificate "
            "(restore the token, or remove the certificate)"
        )
    if key is None:
        key = backend.create_key(label, authority.key_algorithm)
        certificate = self_signed(name, key, authority.lifetime, linter, now)
        how = (
            f"created an {authority.key_algorithm.value} key in the HSM and its self-signed "
            "certificate"
        )
    elif legacy is None:
        certificate = self_signed(name, key, authority.lifetime, linter, now)
        how = "key existed; created its certificate"
    elif not _same_key(legacy, key):
        raise ConfigError(
            f"{name}: the certificate in {config.ca_dir} does not match the HSM key {label!r}"
        )
    else:
        certificate = legacy
        how = f"adopted its certificate from {config.ca_dir} into the store"
    pem = certificate.public_bytes(Encoding.PEM).decode()
    public = certificate.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    row = GenerationRow(
        name,
        1,
        label,
        pem,
        GenerationState.ISSUING,
        Provenance.GENERATED,
        now,
        KeyKind.CA,
        public.decode(),
    )
    record_generation(ledger, row, how)
    return f"{name}: {how}"


def initialize(
    config: ServerConfig,
    backend: KeyBackend,
    ledger: Ledger,
    linter: Linter,
    clock: Clock = lambda: datetime.now(UTC),
) -> list[str]:
    """Create what is missing; return one line per CA saying what was done."""
    existing = generation_rows(ledger.store)
    report = [
        _init_one(config, authority, existing.get(name, []), backend, ledger, linter, clock())
        for name, authority in config.authorities.items()
    ]
    return report


def load(
    config: ServerConfig,
    backend: KeyBackend,
    store: Store,
    linter: Linter,
    clock: Clock = lambda: datetime.now(UTC),
    before_signing: Callable[[], None] = lambda: None,
) -> dict[str, CertificateAuthority]:
    """Every CA, checked: in the store, each certificate a CA bound to its HSM key, and
    the issuing generation current."""
    return _build(config, backend, generation_rows(store), linter, clock(), before_signing)


def _build(
    config: ServerConfig,
    backend: KeyBackend,
    rows: Mapping[str, Sequence[GenerationRow]],
    linter: Linter,
    now: datetime,
    before_signing: Callable[[], None],
) -> dict[str, CertificateAuthority]:
    loaded: dict[str, CertificateAuthority] = {}
    for name in config.authorities:
        found = rows.get(name, [])
        if not found:
            raise ConfigError(
                f"{name}: not in the store; run 'kubeca-server --config {config.path} init' first"
            )
        generations = tuple(_load_generation(row, backend, linter, before_signing) for row in found)
        ca = CertificateAuthority(name, generations)
        if ca.issuing.not_after <= now:
            raise ConfigError(f"{name}: the CA certificate expired")
        loaded[name] = ca
    return loaded


def _load_generation(
    row: GenerationRow,
    backend: KeyBackend,
    linter: Linter,
    before_signing: Callable[[], None] = lambda: None,
) -> Generation:
    name = row.authority
    try:
        certificate = x509.load_pem_x509_certificate(row.certificate_pem.encode())
    except ValueError:
        raise ConfigError(
            f"{name}: generation {row.generation}'s certificate is unreadable"
        ) from None
    key = backend.find_key(row.key_label)
    if key is None:
        raise ConfigError(
            f"{name}: its HSM key {row.key_label!r} is missing; run 'kubeca-server init' "
            "against the right token"
        )
    if not _same_key(certificate, key):
        raise ConfigError(
            f"{name}: the certificate of generation {row.generation} does not match the HSM "
            f"key {row.key_label!r}; refusing to start"
        )
    _check_is_ca(name, certificate)
    return Generation(
        name,
        row.generation,
        certificate,
        Signer(key, linter, before_signing),
        row.state,
        row.provenance,
        row.cross_certificate_pem,
    )


def _fingerprint(rows: Mapping[str, Sequence[GenerationRow]]) -> tuple[object, ...]:
    return tuple(
        (r.authority, r.generation, r.state, r.certificate_pem)
        for name in sorted(rows)
        for r in rows[name]
    )


class GenerationWatch:
    """Swaps the registry's snapshot when the store's generations change: a rotation
    step taken by ``kubeca-server ca rotate`` (another process, maybe another host)
    reaches every running worker without a restart. ``check`` costs one small read
    while nothing changed; the HSM is asked for keys only when something did."""

    def __init__(
        self,
        config: ServerConfig,
        backend: KeyBackend,
        store: Store,
        linter: Linter,
        registry: CARegistry,
        clock: Clock,
        before_signing: Callable[[], None] = lambda: None,
    ) -> None:
        self._before_signing = before_signing
        self._config = config
        self._backend = backend
        self._store = store
        self._linter = linter
        self._registry = registry
        self._clock = clock
        self._seen = _fingerprint(generation_rows(store))

    def check(self) -> bool:
        """Reload if the generations changed; True when the snapshot was replaced."""
        rows = generation_rows(self._store)
        seen = _fingerprint(rows)
        if seen == self._seen:
            return False
        self._registry.replace(
            _build(
                self._config,
                self._backend,
                rows,
                self._linter,
                self._clock(),
                self._before_signing,
            )
        )
        self._seen = seen
        return True


def publish_bundles(config: ServerConfig, authorities: Mapping[str, CertificateAuthority]) -> None:
    """Write each CA's trust bundle to state_dir/ca/<name>.crt, for operators; a file
    whose content is current is left alone."""
    config.ca_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, ca in authorities.items():
        path = config.ca_dir / f"{name}.crt"
        data = ca.bundle_pem.encode()
        if not path.exists() or path.read_bytes() != data:
            atomic_write(path, data)
