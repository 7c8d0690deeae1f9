"""The whole decision fuzzed: hostile profiles, parameters and CSRs through the pipeline.

Every answer is a certificate that the independent policy check (tests/fuzz/policy.py)
passes, or a refusal with a status a caller may be given for its own input; never
INTERNAL, and every certificate has its audit record.
"""

from __future__ import annotations

import ipaddress

from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st
from kubeca_client.errors import KubecaError
from kubeca_server.issuance.model import IssueRequest
from kubeca_server.profiles import PROFILES

from tests.fuzz.policy import violations
from tests.fuzz.strategies import HOSTILE_IPS, HOSTILE_NAMES, examples, parameters
from tests.unit.conftest import CALLER, World
from tests.unit.helpers import make_csr, p256_key

EXPECTED = {"INVALID_ARGUMENT", "PERMISSION_DENIED", "NOT_FOUND", "FAILED_PRECONDITION"}
KEY = p256_key()


def _san(value: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


csr_sans = st.one_of(
    st.none(),
    st.lists(
        st.sampled_from([v for v in HOSTILE_NAMES + HOSTILE_IPS if "/" not in v and "%" not in v]),
        max_size=4,
    ),
)


@examples(1000)
@given(
    profile=st.one_of(st.sampled_from(sorted(PROFILES)), st.text(max_size=20)),
    values=parameters(),
    sans=csr_sans,
)
def test_the_pipeline_answers_hostile_requests_within_policy(
    world: World, profile: str, values: dict[str, str], sans: list[str] | None
) -> None:
    try:
        csr = make_csr(KEY, sans=None if sans is None else [_san(s) for s in sans])
    except ValueError:
        return  # cryptography itself will not build it; nothing reaches us
    try:
        issued = world.pipeline.issue(CALLER, IssueRequest(profile, csr, values))
    except KubecaError as exc:
        assert exc.status in EXPECTED, exc.message
        return
    certificate = issued.certificate
    node = values.get("node_name", "").strip()
    assert violations(profile, certificate, node) == []
    serials = {r["serial"] for r in world.events("certificate.issued")}
    assert issued.serial_hex in serials
