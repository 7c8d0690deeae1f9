"""Between the domain's frozen values and kubeca.v1 messages, in one place."""

from __future__ import annotations

from datetime import datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from kubeca_client._proto.kubeca.v1 import kubeca_pb2 as pb

from kubeca_server.store import CertificateRow, TokenRecord

# Past this, a lifetime is simply "too long"; clamping keeps it inside timedelta's range
# and leaves the judgement to the policy.
LIFETIME_CLAMP_SECONDS = 1000 * 365 * 24 * 3600


def duration(seconds: int) -> timedelta | None:
    """A request's duration field: 0 means unset."""
    if seconds == 0:
        return None
    return timedelta(seconds=max(min(seconds, LIFETIME_CLAMP_SECONDS), -1))


def timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def certificate_record(row: CertificateRow) -> pb.CertificateRecord:
    message = pb.CertificateRecord(
        serial=row.serial,
        authority=row.authority,
        profile=row.profile,
        subject=row.subject,
        sans=list(row.sans),
        not_before=timestamp(row.not_before),
        not_after=timestamp(row.not_after),
        caller=row.caller,
        revoked=row.revoked_at is not None,
        revocation_reason=row.revocation_reason or "",
        fingerprint_sha256=row.fingerprint_sha256,
    )
    if row.revoked_at is not None:
        message.revoked_at.CopyFrom(timestamp(row.revoked_at))
    return message


def bootstrap_token(record: TokenRecord) -> pb.BootstrapToken:
    return pb.BootstrapToken(
        token_id=record.token_id,
        profiles=list(record.profiles),
        node_name=record.node_name,
        addresses=list(record.addresses),
        expires=timestamp(record.expires_at),
        created_by=record.created_by,
        used_profiles=list(record.used_profiles),
        revoked=record.revoked,
    )
