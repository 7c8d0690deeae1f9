"""The one error taxonomy of kubeca, shared by the client and the server.

This module imports nothing from grpc: the server's policy layers raise these, the
service layer maps them to status codes by ``status`` name, and the client maps a
status back to the same class in one place (``kubeca_client.client``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Self


class KubecaError(Exception):
    """Base of every error kubeca reports to a person. The message is safe to show.

    ``context`` holds what the decision had learned when it refused (the requested
    subject, a token id): facts for the audit record, never shown to the caller. It is
    given at construction or by ``in_context``, which returns a new error, so no layer
    patches attributes onto an exception another layer raised.
    """

    status: str = "INTERNAL"
    exit_code: int = 1

    def __init__(self, message: str, context: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.context: Mapping[str, Any] = MappingProxyType(dict(context or {}))

    def __str__(self) -> str:
        return self.message

    def in_context(self, context: Mapping[str, Any]) -> Self:
        """The same error (class, message, traceback), with ``context`` added."""
        widened = copy.copy(self)
        widened.context = MappingProxyType({**context, **self.context})
        return widened.with_traceback(self.__traceback__)


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
    """The HSM or the store cannot be reached now (or, on the client, the service);
    the same call may work later. Nothing else is UNAVAILABLE."""

    status = "UNAVAILABLE"
    exit_code = 69


class DeadlineExceeded(Unavailable):
    """The service did not answer within the deadline."""

    status = "DEADLINE_EXCEEDED"


class Aborted(KubecaError):
    """The call lost a race it may win when retried (an identical request is still
    being issued elsewhere)."""

    status = "ABORTED"
    exit_code = 75  # EX_TEMPFAIL


class FailedPrecondition(KubecaError):
    """The service is not in a state to do this (a CA expired, a step of a rotation
    not taken); an operator must act before the same call can succeed."""

    status = "FAILED_PRECONDITION"
    exit_code = 78  # EX_CONFIG


class ConfigError(FailedPrecondition):
    """A configuration file or setting is wrong; the message names the key."""


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
        Aborted,
        FailedPrecondition,
        InternalError,
    )
}
