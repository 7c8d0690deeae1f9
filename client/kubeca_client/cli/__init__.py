"""kubeca: get certificates from a kubeca service; leaf keys are made here and stay here.

Every error reaches the user as one line on stderr and an exit code from the error
taxonomy; nothing prints a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from kubeca_client.cli import issue, layout, ledger, signer, terraform_provider, tokens
from kubeca_client.cli.common import CONFIG_ENV, parse_duration, parse_params
from kubeca_client.errors import KubecaError

__all__ = ["CONFIG_ENV", "main", "parse_duration", "parse_params"]

# What a shell reports for a program that SIGPIPE ended: 128 + 13.
EXIT_CLOSED_PIPE = 141
TOKEN_SHAPE = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")


class _Parser(argparse.ArgumentParser):
    """No abbreviated options (argparse would take --token for --token-file and read
    the secret as a file name), and no bootstrap token echoed back in an error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        super().error(TOKEN_SHAPE.sub("<redacted token>", message))


def _terraform(args: argparse.Namespace) -> int:
    # Reached with global options (kubeca --config F terraform): the query says it all.
    from kubeca_client import terraform

    return terraform.main()


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kubeca", description="Kubernetes certificates from an HSM-backed CA")
    parser.add_argument(
        "--config", help=f"client config (TOML); default: ${CONFIG_ENV}", default=None
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    issue.add_commands(commands)
    layout.add_commands(commands)
    tokens.add_commands(commands)
    ledger.add_commands(commands)
    signer.add_commands(commands)
    terraform_command = commands.add_parser(
        "terraform",
        help="Terraform external data source program: JSON query on stdin, JSON on stdout",
    )
    terraform_command.set_defaults(run=_terraform)
    terraform_provider.add_commands(commands)
    return parser


def _closed_pipe() -> int:
    """The reader went away (``kubeca certs list | head``): stop quietly, as other tools
    do. Python would otherwise report the failed flush of stdout once more at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_CLOSED_PIPE


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments == ["terraform"]:
        # Terraform's protocol owns stdin, stdout and the exit code; nothing else runs.
        from kubeca_client import terraform

        return terraform.main()
    args = _parser().parse_args(arguments)
    try:
        code: int = args.run(args)
        sys.stdout.flush()  # here, where a closed pipe is still ours to report quietly
        return code
    except KubecaError as exc:
        print(f"kubeca: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return _closed_pipe()
    except OSError as exc:
        print(f"kubeca: error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A bug, not a user's mistake: still one line, never a traceback.
        print(f"kubeca: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
