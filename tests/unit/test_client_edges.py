"""Issue 10, defect 9: the client names what happened at its edges."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import grpc
from kubeca_client.client import DEFAULT_RECEIVE_LIMIT, error_from_rpc
from kubeca_client.errors import FailedPrecondition, InvalidArgument


class _Refused(grpc.RpcError):
    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        return self._details


def test_an_answer_too_large_for_the_client_is_named_as_such() -> None:
    details = f"Received message larger than max (5000123 vs. {DEFAULT_RECEIVE_LIMIT})"
    error = error_from_rpc(_Refused(details), "ca:8443")
    assert isinstance(error, FailedPrecondition)
    assert "answer" in error.message and "5000123 bytes" in error.message
    assert "request refused" not in error.message


def test_a_request_too_large_for_the_server_is_still_invalid_argument() -> None:
    details = "Received message larger than max (204900 vs. 65536)"
    error = error_from_rpc(_Refused(details), "ca:8443")
    assert isinstance(error, InvalidArgument)
    assert "request refused as too large" in error.message


def test_a_closed_pipe_ends_the_command_quietly() -> None:
    program = textwrap.dedent(
        """
        import sys
        from kubeca_client import cli
        from kubeca_client.cli import ledger

        def many_lines(args):
            for n in range(200000):
                print(f"certificate {n}")
            return 0

        ledger.cmd_certs_list = many_lines
        sys.exit(cli.main(["certs", "list"]))
        """
    )
    pipeline = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$0" -c "$1" | head -n 1', sys.executable, program],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert pipeline.stdout == "certificate 0\n"
    assert pipeline.stderr == ""
    assert pipeline.returncode == 141
