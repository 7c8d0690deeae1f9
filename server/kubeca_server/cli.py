"""kubeca-server: init the CAs in the HSM, or serve.

Secrets never come from argv: the HSM PIN is read from the file or environment
variable the config names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kubeca_client.errors import KubecaError

from kubeca_server.config import load_config
from kubeca_server.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeca-server", description="HSM-backed certificate authority for Kubernetes"
    )
    parser.add_argument("--config", required=True, type=Path, help="server config (TOML)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "init", help="create the CA keys in the HSM and their certificates (idempotent)"
    )
    serve = commands.add_parser("serve", help="serve the gRPC API")
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes sharing the port (default 1)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging()
    try:
        config = load_config(args.config)
        if args.command == "init":
            from kubeca_server.runtime import run_init

            for line in run_init(config):
                print(line)
            return 0
        if args.workers < 1 or args.workers > 64:
            print("kubeca-server: error: --workers must be between 1 and 64", file=sys.stderr)
            return 2
        from kubeca_server.runtime import serve

        serve(config, args.workers)
        return 0
    except KubecaError as exc:
        print(f"kubeca-server: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
