"""The lint cache against pkilint run whole: for generated certificates of every
profile (names, addresses, serials, validities, key types varying), the verdict the
cached linter reaches is the one pkilint reaches on the whole certificate."""

from __future__ import annotations

import functools
import ipaddress
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kubeca_client.errors import InvalidArgument
from kubeca_server.ca.lint import Finding, Linter
from kubeca_server.keys import signature_hash
from kubeca_server.profiles import PROFILES, Issuer, build_leaf, parse_inputs
from kubeca_server.serials import new_serial

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
DNS = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
WILDCARD = DNS.map(lambda d: "*." + d)
IPV4 = st.ip_addresses(v=4).filter(lambda a: not (a.is_unspecified or a.is_multicast))
IPV6 = st.ip_addresses(v=6).filter(
    lambda a: not (a.is_unspecified or a.is_multicast or a.ipv4_mapped)
)
ADDRESS = st.one_of(IPV4, IPV6).map(str)
SAN = st.one_of(DNS, WILDCARD, ADDRESS)


@functools.cache
def leaf_key(kind: str) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    if kind.startswith("rsa"):
        return rsa.generate_private_key(65537, int(kind[3:])).public_key()
    curve = ec.SECP384R1() if kind == "p384" else ec.SECP256R1()
    return ec.generate_private_key(curve).public_key()


@functools.cache
def issuer(kind: str) -> tuple[Issuer, ec.EllipticCurvePublicKey | rsa.RSAPublicKey]:
    key = (
        rsa.generate_private_key(65537, 2048).public_key()
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1()).public_key()
    )
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, f"{kind}-ca")])
    key_id = x509.SubjectKeyIdentifier.from_public_key(key).digest
    return Issuer(name, key_id, datetime(2099, 1, 1, tzinfo=UTC)), key


@functools.cache
def linter() -> Linter:
    return Linter()


@functools.cache
def signing_key(kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """A real key of the CA's kind, for the reference's genuinely signed certificate."""
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    return ec.generate_private_key(ec.SECP256R1())


def whole_verdict(
    builder: x509.CertificateBuilder, ca_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey
) -> list[Finding]:
    """The reference: pkilint run whole on the certificate with a real signature."""
    key = signing_key("rsa" if isinstance(ca_key, rsa.RSAPublicKey) else "ec")
    signed = builder.sign(key, signature_hash(ca_key))
    return linter().errors(signed.public_bytes(Encoding.DER))


@st.composite
def parameters(draw: st.DrawFn, profile: str) -> dict[str, str]:
    declared = {p.name for p in PROFILES[profile].parameters}
    values: dict[str, str] = {}
    if "node_name" in declared:
        values["node_name"] = draw(DNS.filter(lambda n: len(n) <= 40))
    if "advertise_address" in declared and draw(st.booleans()):
        values["advertise_address"] = draw(ADDRESS)
    if "advertise_address" in {p.name for p in PROFILES[profile].required}:
        values.setdefault("advertise_address", draw(ADDRESS))
    if "extra_sans" in declared:
        values["extra_sans"] = ",".join(draw(st.lists(SAN, max_size=4)))
    if "control_plane_endpoint" in declared and draw(st.booleans()):
        values["control_plane_endpoint"] = draw(st.one_of(DNS, ADDRESS))
    if "dns_domain" in declared and draw(st.booleans()):
        values["dns_domain"] = draw(DNS)
    if "service_cidr" in declared and draw(st.booleans()):
        values["service_cidr"] = draw(st.sampled_from(["10.96.0.0/12", "fd00::/108"]))
    return values


@st.composite
def templates(draw: st.DrawFn) -> tuple[x509.CertificateBuilder, object]:
    profile = draw(st.sampled_from(sorted(PROFILES)))
    params = draw(parameters(profile))
    try:
        inputs = parse_inputs(PROFILES[profile], params)
        PROFILES[profile].subject(inputs)
        PROFILES[profile].sans(inputs)
    except InvalidArgument:
        assume(False)
        raise
    the_issuer, ca_key = issuer(draw(st.sampled_from(["ec", "rsa"])))
    key = leaf_key(draw(st.sampled_from(["p256", "p384", "rsa2048", "rsa3072"])))
    lifetime = timedelta(minutes=draw(st.integers(10, 60 * 24 * 365 * 30)))
    now = datetime(2030, 1, 1, tzinfo=UTC) + timedelta(
        seconds=draw(st.integers(0, 3600 * 24 * 365 * 25))
    )
    serial = draw(st.one_of(st.just(new_serial()), st.integers(1, 2**127 - 1)))
    builder = build_leaf(PROFILES[profile], inputs, key, the_issuer, serial, now, lifetime)
    return builder, ca_key


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(templates())
def test_the_cached_verdict_is_pkilints_whole_verdict(template: tuple[object, object]) -> None:
    builder, ca_key = template
    assert isinstance(builder, x509.CertificateBuilder)
    assert isinstance(ca_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    got = sorted(str(f) for f in linter().refusals(builder, ca_key))
    want = sorted(str(f) for f in whole_verdict(builder, ca_key))
    assert got == want


def test_the_cache_lints_each_shape_once_and_names_every_time() -> None:
    cached = Linter()
    the_issuer, ca_key = issuer("ec")
    key = leaf_key("p256")
    profile = PROFILES["etcd-server"]
    now = datetime(2030, 1, 1, tzinfo=UTC)
    for node in ("etcd-1", "etcd-2", "etcd-3"):
        inputs = parse_inputs(profile, {"node_name": node, "advertise_address": "10.0.0.1"})
        builder = build_leaf(profile, inputs, key, the_issuer, new_serial(), now, timedelta(days=1))
        assert cached.refusals(builder, ca_key) == []
    assert cached.shapes_linted == 1
    # A name pkilint refuses is refused on a cache hit too (its last label ends in a digit).
    inputs = parse_inputs(profile, {"node_name": "node.rack1", "advertise_address": "10.0.0.1"})
    builder = build_leaf(profile, inputs, key, the_issuer, new_serial(), now, timedelta(days=1))
    refused = cached.refusals(builder, ca_key)
    assert cached.shapes_linted == 1
    assert [f.code for f in refused] == ["pkix.invalid_domain_name_syntax"] * 1
    assert ipaddress.ip_address("10.0.0.1")  # the address itself is never a lint matter
