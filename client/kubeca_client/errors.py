"""The one error taxonomy of kubeca, shared by the client and the server.

This module imports nothing from grpc: the server's policy layers raise these, the
service layer maps them to status codes by ``status`` name, and the client maps a
status back to the same class in one place (``kubeca_client.client``).
"""

from __future__ import annotations


class KubecaError(Exception):
    """Base of every error kubeca reports to a person. The message is safe to show."""

    status: str = "INTERNAL"
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(KubecaError):
    """The request is malformed or outside the profile's policy."""

    status = "INVALID_ARGUMENT"
    exit_code = 2


class NotFound(KubecaError):
    """A named thing (profile, authority) does not exist."""

    status = "NOT_FOUND"
    exit_code = 3


class PermissionDenied(KubecaError):
    """The caller is known but may not have what it asked for."""

    status = "PERMISSION_DENIED"
    exit_code = 4


class Unauthenticated(KubecaError):
    """The caller could not be identified."""

    status = "UNAUTHENTICATED"
    exit_code = 4


class Unavailable(KubecaError):
    """The HSM or the service cannot be reached now; the same call may work later."""

    status = "UNAVAILABLE"
    exit_code = 69


class DeadlineExceeded(Unavailable):
    """The service did not answer within the deadline."""

    status = "DEADLINE_EXCEEDED"


class ConfigError(KubecaError):
    """A configuration file or setting is wrong; the message names the key."""

    status = "FAILED_PRECONDITION"
    exit_code = 78


class InternalError(KubecaError):
    """Something unexpected; the details are in the server's log, not here."""


BY_STATUS: dict[str, type[KubecaError]] = {
    cls.status: cls
    for cls in (
        InvalidArgument,
        NotFound,
        PermissionDenied,
        Unauthenticated,
        Unavailable,
        DeadlineExceeded,
        ConfigError,
        InternalError,
    )
}
