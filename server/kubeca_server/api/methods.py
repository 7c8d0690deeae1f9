"""Method registration, written once for every method of every service.

A ``Service`` is a full name, a way to identify callers, and ``Method``s: each a
request type, a handler from (request, caller) to a response, the audit event its
refusals are recorded under, and what of its request the record shows. The wrapper
around each handler:

- decodes the raw request bytes itself: grpcio would answer bytes it cannot decode
  with INTERNAL, but they are the caller's fault, so they are INVALID_ARGUMENT;
- maps the error taxonomy to status codes with a bounded message, and anything else
  to INTERNAL with an incident id (the traceback goes to the server log only);
- writes the audit record of every refusal, with what the decision learned (the
  error's ``context``), exactly once;
- counts the request, its latency and its refusals.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn, Protocol, TypeVar

import grpc
import structlog
from google.protobuf.message import DecodeError, Message
from kubeca_client.errors import InvalidArgument, KubecaError, Unavailable

from kubeca_server.issuance.model import ANONYMOUS, Caller
from kubeca_server.ledger.audit import Ledger
from kubeca_server.metrics import Metrics

log = structlog.get_logger("kubeca.api")

# gRPC clients cap the headers (and so the status message) of an answer: 8 KiB is
# common. A refusal says what is wrong in far less.
MAX_STATUS_MESSAGE = 1024

Request = TypeVar("Request", bound=Message)
Response = TypeVar("Response", bound=Message)


def status_message(text: str) -> str:
    """One line of printable text, short enough for any client's header limit."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    return flat if len(flat) <= MAX_STATUS_MESSAGE else flat[: MAX_STATUS_MESSAGE - 3] + "..."


@dataclass(frozen=True)
class Method(Generic[Request, Response]):
    name: str
    request_type: type[Request]
    response_type: type[Response]
    handle: Callable[[Request, Caller], Response]
    refusal_event: str = "request.refused"
    # What the audit record of a refusal shows of the request (bounded values).
    describe: Callable[[Request], Mapping[str, Any]] = field(default=lambda request: {})
    # The metrics label for a request; only values from a fixed set, never raw input.
    label: Callable[[Request], str] = field(default=lambda request: "")


@dataclass(frozen=True)
class Service:
    name: str  # the full service name, e.g. "kubeca.v1.CertificateAuthority"
    methods: Sequence[Method[Any, Any]]
    identify: Callable[[grpc.ServicerContext], Caller]


class Credentials(Protocol):
    def check(self, caller: Caller) -> None:
        """Raise (Unauthenticated) if the caller's credential was revoked."""


class _NoRevocations:
    def check(self, caller: Caller) -> None:
        """Nothing is revoked: for services whose callers hold no certificates."""


class Unavailability(Protocol):
    def recheck_soon(self) -> None:
        """Something looked unreachable: probe the HSM and the store again now."""


@dataclass(frozen=True)
class Environment:
    """What the wrapper around every method needs from the rest of the service."""

    ledger: Ledger
    metrics: Metrics
    health: Unavailability
    # Every call of an operator is checked, whatever the method (issue 10, defect 4).
    credentials: Credentials = field(default_factory=_NoRevocations)


def generic_handler(service: Service, env: Environment) -> grpc.GenericRpcHandler[Any, Any]:
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            _wrap(service, method, env),
            request_deserializer=None,  # raw bytes: decoded in the wrapper
            response_serializer=method.response_type.SerializeToString,
        )
        for method in service.methods
    }
    return grpc.method_handlers_generic_handler(service.name, handlers)


def _wrap(
    service: Service, method: Method[Any, Any], env: Environment
) -> Callable[[bytes, grpc.ServicerContext], Message]:
    def handle(raw: bytes, context: grpc.ServicerContext) -> Message:
        started = time.perf_counter()
        fields: dict[str, Any] = {"method": method.name}
        caller = Caller("unidentified", context.peer(), ANONYMOUS)
        label = ""
        try:
            caller = service.identify(context)
            env.credentials.check(caller)
            request = _decode(method, raw)
            fields.update(method.describe(request))
            label = method.label(request)
            response: Message = method.handle(request, caller)
            return response
        except KubecaError as exc:
            if isinstance(exc, Unavailable):
                env.health.recheck_soon()
            _record(env, method, exc, {**fields, **caller.fields()})
            env.metrics.refused(method.name, label, exc.status)
            _abort(context, grpc.StatusCode[exc.status], status_message(exc.message))
        except Exception as exc:
            incident = secrets.token_hex(6)
            log.exception("rpc.internal_error", method=method.name, incident=incident)
            _record(env, method, exc, {**fields, **caller.fields(), "incident": incident})
            env.metrics.refused(method.name, label, "INTERNAL")
            _abort(
                context,
                grpc.StatusCode.INTERNAL,
                f"internal error (incident {incident}); the details are in the server log",
            )
        finally:
            env.metrics.request(method.name, time.perf_counter() - started)

    return handle


def _decode(method: Method[Any, Any], raw: bytes) -> Message:
    try:
        request: Message = method.request_type.FromString(raw)
        return request
    except DecodeError:
        raise InvalidArgument(
            f"the request is not a valid {method.request_type.DESCRIPTOR.full_name} message"
        ) from None


def _record(
    env: Environment, method: Method[Any, Any], error: BaseException, fields: Mapping[str, Any]
) -> None:
    """The refusal's audit record; if even that cannot be written, say so in the log
    (the caller gets the refusal either way: nothing was issued)."""
    try:
        env.ledger.refusal(method.refusal_event, error, fields)
    except KubecaError as exc:
        log.error("audit.refusal_not_recorded", method=method.name, error=exc.message)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message)
    raise AssertionError("context.abort returned")
