"""What a plan can say about a certificate before anything is issued.

Offline (`terraform validate` and every plan): the CSR parses and is self-signed, the
parameters of well-known kinds parse, the durations and the revocation reason do.
With the service (at plan time, after the provider is configured): the profile exists
and is enabled, it takes these parameters, and its required ones are given. The
service still decides; these only move its most common refusals from apply to plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509

from kubeca_client.cli.common import parse_duration
from kubeca_client.client import ProfileInfo
from kubeca_client.errors import InvalidArgument
from kubeca_client.parameters import PARSERS, parse_parameter
from kubeca_client.revocation import parse_reason

MAX_CSR_BYTES = 64 * 1024


def csr_problem(pem: str) -> str | None:
    """Why ``pem`` is not a CSR the service could take, or None."""
    if "PRIVATE KEY" in pem:
        return "csr_pem holds a private key; pass the CSR (tls_cert_request.cert_request_pem)"
    if len(pem) > MAX_CSR_BYTES:
        return f"csr_pem is larger than {MAX_CSR_BYTES // 1024} KiB"
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError:
        # cryptography's parse error names ASN.1 tags, which help nobody here.
        return "csr_pem is not a PEM certificate request (BEGIN CERTIFICATE REQUEST)"
    if not csr.is_signature_valid:
        return "csr_pem's signature does not verify: it was not made with its key"
    return None


def duration_seconds(text: str, name: str) -> int:
    """'90d', '12h', '1h30m' as whole seconds; InvalidArgument naming ``name``."""
    try:
        return int(parse_duration(text).total_seconds())
    except InvalidArgument as exc:
        raise InvalidArgument(f"{name}: {exc.message}") from None


def parameter_problems(parameters: Mapping[str, str]) -> list[str]:
    """Malformed values of the parameter kinds every profile shares (node_name is a DNS
    name, advertise_address an IP, ...). Whether a profile takes them is the service's."""
    problems = []
    for name, value in sorted(parameters.items()):
        if not name or not (name + value).isprintable():
            problems.append(f"parameters[{name[:40]!r}]: names and values are printable text")
        elif name in PARSERS:
            try:
                parse_parameter(name, value)
            except InvalidArgument as exc:
                problems.append(exc.message)
    return problems


def offline_problems(
    *,
    csr_pem: str | None,
    parameters: Mapping[str, str] | None,
    lifetime: str | None,
    renew_before: str | None,
    revocation_reason: str | None,
) -> list[str]:
    """Everything a plan can refuse without the service; None means not known yet."""
    problems: list[str] = []
    if csr_pem is not None and (problem := csr_problem(csr_pem)) is not None:
        problems.append(problem)
    problems.extend(parameter_problems(parameters or {}))
    for name, text in (("lifetime", lifetime), ("renew_before", renew_before)):
        if text is not None:
            try:
                duration_seconds(text, name)
            except InvalidArgument as exc:
                problems.append(exc.message)
    if revocation_reason is not None:
        try:
            parse_reason(revocation_reason)
        except InvalidArgument as exc:
            problems.append(f"revocation_reason: {exc.message}")
    return problems


def profile_problems(
    offered: Sequence[ProfileInfo], profile: str, parameters: Mapping[str, str]
) -> list[str]:
    """What the service would refuse about the profile and its parameters."""
    by_name = {p.name: p for p in offered}
    found = by_name.get(profile)
    if found is None:
        return [f"the service offers no profile {profile[:64]!r} (it offers: {', '.join(by_name)})"]
    if not found.enabled:
        return [f"profile {profile} is disabled on the service"]
    takes = {q.name: q for q in found.parameters}
    problems = [
        f"profile {profile} does not take parameter {name[:64]!r} "
        f"(it takes: {', '.join(sorted(takes)) or 'no parameters'})"
        for name in sorted(set(parameters) - set(takes))
    ]
    problems += [
        f"profile {profile} needs parameter {q.name} ({q.description})"
        for q in found.parameters
        if q.required and not parameters.get(q.name, "").strip()
    ]
    return problems


def renewal_due(
    not_before: datetime, not_after: datetime, now: datetime, renew_before: timedelta | None
) -> bool:
    """Inside the renewal window: ``renew_before`` of expiry, else the last third of the
    certificate's life (where the service itself stops returning it for a repeat)."""
    window = renew_before if renew_before is not None else (not_after - not_before) / 3
    return now >= not_after - window


def rfc3339(moment: datetime) -> str:
    """As hashicorp/tls writes validity times, so timeadd() and timecmp() take them."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
