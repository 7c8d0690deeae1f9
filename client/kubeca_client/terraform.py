"""`kubeca terraform`: Terraform's `external` data source protocol, exactly.

stdin: one JSON object whose values are all strings (the data source's `query`).
stdout: one JSON object whose values are all strings, and nothing else, ever.
Failure: a non-zero exit and one line on stderr, which Terraform shows.

Terraform reads a data source on every plan, so this must be idempotent: the server
returns the same certificate for the same request while it is outside its renewal
window, and a renewed one inside it, which is the change a plan should show. Only
public material comes back: the key stays with whoever made the CSR. Terraform has no
timeout for the program, so every network call here is bounded.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from kubeca_client.client import Client
from kubeca_client.config import ClientConfig, resolve_connection
from kubeca_client.errors import InvalidArgument, KubecaError

MAX_INPUT_BYTES = 1024 * 1024
DEFAULT_TIMEOUT_SECONDS = 30.0
MAX_TIMEOUT_SECONDS = 300.0
QUERY_KEYS = {
    "server": "HOST:PORT of the operator port (or use client_config)",
    "client_config": "path of a kubeca client config file (instead of the keys below)",
    "ca_file": "the service CA certificate file",
    "ca_cert_hash": "sha256:... pin of the service CA (instead of ca_file)",
    "cert_file": "the operator's client certificate",
    "key_file": "the operator's client key",
    "timeout_seconds": "bound on the whole call (default 30)",
    "profile": "the profile to issue",
    "csr_pem": "the CSR, PEM (from tls_cert_request or a node)",
    "parameters": "profile parameters as a JSON-encoded object of strings",
    "lifetime": "requested lifetime in seconds (optional)",
}
PARAMETER_PREFIX = "param_"  # flat form: param_node_name = "cp-1"


def _query(stdin: IO[bytes]) -> dict[str, str]:
    data = stdin.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidArgument("the query on stdin is larger than 1 MiB")
    try:
        text = data.decode("utf-8")  # what Terraform sends, whatever the locale says
    except UnicodeDecodeError:
        raise InvalidArgument("stdin is not UTF-8") from None
    try:
        query = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise InvalidArgument(f"stdin is not a JSON object ({exc})") from None
    if not isinstance(query, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in query.items()
    ):
        raise InvalidArgument("stdin must be a JSON object of string values (the query)")
    for key in query:
        if key not in QUERY_KEYS and not key.startswith(PARAMETER_PREFIX):
            raise InvalidArgument(
                f"unknown query key {key[:40]!r}; known: {', '.join(QUERY_KEYS)}, param_*"
            )
    return query


def _parameters(query: Mapping[str, str]) -> dict[str, str]:
    parameters: dict[str, str] = {}
    if query.get("parameters"):
        try:
            decoded = json.loads(query["parameters"])
        except ValueError:
            raise InvalidArgument("parameters must be jsonencode()d: a JSON object") from None
        if not isinstance(decoded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in decoded.items()
        ):
            raise InvalidArgument("parameters must be a JSON object of string values")
        parameters.update(decoded)
    for key, value in query.items():
        if key.startswith(PARAMETER_PREFIX):
            name = key.removeprefix(PARAMETER_PREFIX)
            if name in parameters:
                raise InvalidArgument(f"parameter {name} is given twice")
            parameters[name] = value
    return parameters


def _timeout(query: Mapping[str, str]) -> float:
    text = query.get("timeout_seconds", "")
    if not text:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not 0 < value <= MAX_TIMEOUT_SECONDS:
        raise InvalidArgument(f"timeout_seconds must be a number in (0, {MAX_TIMEOUT_SECONDS:g}]")
    return value


def _config(query: Mapping[str, str], timeout: float) -> ClientConfig:
    def path(key: str) -> Path | None:
        return Path(query[key]) if query.get(key) else None

    return resolve_connection(
        address=query.get("server"),
        client_config=path("client_config"),
        ca_file=path("ca_file"),
        ca_cert_hash=query.get("ca_cert_hash") or None,
        cert_file=path("cert_file"),
        key_file=path("key_file"),
        timeout_seconds=timeout,
        address_key="server",
    )


def run(query: Mapping[str, str]) -> dict[str, str]:
    profile = query.get("profile", "")
    if not profile:
        raise InvalidArgument("profile is required")
    csr = query.get("csr_pem", "")
    if "PRIVATE KEY" in csr:
        raise InvalidArgument("csr_pem holds a private key; pass the CSR, never the key")
    if "CERTIFICATE REQUEST" not in csr:
        raise InvalidArgument("csr_pem must be a PEM certificate request")
    lifetime = query.get("lifetime", "")
    if lifetime and not re.fullmatch(r"[0-9]{1,10}", lifetime):
        raise InvalidArgument("lifetime must be a whole number of seconds (at most 10 digits)")
    parameters = _parameters(query)
    config = _config(query, _timeout(query))
    with Client.from_config(config) as client:
        issued = client.issue_certificate(
            profile, csr.encode(), parameters, int(lifetime) if lifetime else 0
        )
    return {
        "certificate_pem": issued.certificate_pem,
        "ca_pem": issued.ca_certificate_pem,
        "serial": issued.serial,
        "not_before": issued.not_before.isoformat(),
        "not_after": issued.not_after.isoformat(),
        "fingerprint_sha256": issued.fingerprint_sha256,
        "authority": issued.authority,
        "reused": "true" if issued.reused else "false",
    }


def main(stdin: IO[bytes] | None = None, stdout: IO[str] = sys.stdout) -> int:
    """The whole external program; returns the exit code."""
    try:
        result = run(_query(stdin if stdin is not None else sys.stdin.buffer))
    except KubecaError as exc:
        sys.stderr.write(f"kubeca terraform: {_one_line(exc.message)}\n")
        return exc.exit_code
    except OSError as exc:
        sys.stderr.write(f"kubeca terraform: {exc.filename or ''}: {exc.strerror}\n")
        return 1
    except Exception as exc:
        sys.stderr.write(
            f"kubeca terraform: unexpected {type(exc).__name__}: {_one_line(str(exc))}\n"
        )
        return 1
    stdout.write(json.dumps(result))
    stdout.flush()
    return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())
