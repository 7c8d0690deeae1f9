"""kubeca-server: init the CAs in the HSM, migrate the store, manage credentials and
the audit chain, or serve.

Secrets never come from argv: the HSM PIN is read from the file or environment
variable the config names.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path

import structlog
from kubeca_client.errors import InvalidArgument, KubecaError
from kubeca_client.trust import parse_pin

from kubeca_server.config import ServerConfig, load_config
from kubeca_server.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubeca-server", description="HSM-backed certificate authority for Kubernetes"
    )
    parser.add_argument("--config", required=True, type=Path, help="server config (TOML)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "init",
        help="create the CA keys in the HSM and their certificates, and bring the store's "
        "schema up to date (idempotent)",
    )
    commands.add_parser(
        "migrate", help="bring the store's schema up to date (serve never does it silently)"
    )
    store = commands.add_parser("store", help="the store itself")
    store_actions = store.add_subparsers(dest="action", required=True)
    copy = store_actions.add_parser(
        "copy",
        help="copy everything the store of another config holds (e.g. an SQLite file) into "
        "this config's store (e.g. PostgreSQL), which must be empty; then verify the copy",
    )
    copy.add_argument(
        "--from",
        dest="source",
        required=True,
        type=Path,
        help="the config (TOML) of the server whose store is copied; opened read-only",
    )
    credentials = commands.add_parser("credentials", help="operator client credentials")
    actions = credentials.add_subparsers(dest="action", required=True)
    issue = actions.add_parser(
        "issue", help="a client certificate and key for an operator identity (its CN)"
    )
    issue.add_argument("--name", help="the identity, as named in [grants]")
    issue.add_argument("--out", type=Path, help="directory for the files")
    issue.add_argument(
        "--renew",
        type=Path,
        metavar="DIR",
        help="renew the credential in DIR (its client.crt names the identity): new files "
        "in DIR unless --out says otherwise; the old certificate stays valid until it "
        "expires or is revoked",
    )
    issue.add_argument("--lifetime-days", type=int, default=365)

    audit = commands.add_parser("audit", help="the tamper-evident audit chain")
    audit_actions = audit.add_subparsers(dest="action", required=True)
    verify = audit_actions.add_parser(
        "verify", help="walk the chain and its signed checkpoints; report the first break"
    )
    verify.add_argument(
        "--service-ca-hash",
        help="sha256:... of the service CA, as init printed it: the trust anchor, from "
        "outside the state directory being checked",
    )
    audit_actions.add_parser("checkpoint", help="sign the chain's head now (HSM)")

    ca = commands.add_parser("ca", help="CA lifecycle: adopt an existing PKI, rotate, status")
    ca_actions = ca.add_subparsers(dest="action", required=True)
    importing = ca_actions.add_parser(
        "import",
        help="put an existing cluster's CA keys into the HSM (before init; never replaces a key)",
    )
    source = importing.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="directory", type=Path, help="a kubeadm pki directory")
    source.add_argument("--authority", help="one authority, with --cert and --key")
    importing.add_argument("--cert", type=Path, help="its CA certificate (PEM; sa.pub for sa)")
    importing.add_argument("--key", type=Path, help="its private key (PEM)")
    passphrase = importing.add_mutually_exclusive_group()
    passphrase.add_argument("--passphrase-file", type=Path, help="file holding the passphrase")
    passphrase.add_argument("--passphrase-env", help="environment variable holding it")
    rotate = ca_actions.add_parser("rotate", help="rotate a CA in three steps")
    steps = rotate.add_subparsers(dest="step", required=True)
    for step, text in (
        ("begin", "a new key generation, trusted beside the old one, which still issues"),
        ("switch", "the new generation issues; the old stays trusted"),
        ("finish", "the old generation is no longer trusted or published"),
    ):
        parser_step = steps.add_parser(step, help=text)
        parser_step.add_argument("--authority", required=True, help="e.g. etcd-ca")
        if step == "finish":
            parser_step.add_argument(
                "--force",
                action="store_true",
                help="retire even while unexpired leaves of the old generation exist",
            )
    ca_actions.add_parser("status", help="each CA's generations, leaves and expiry")

    serve = commands.add_parser("serve", help="serve the gRPC API")
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes sharing the port (default: one per core this process may "
        "run on; one when the config listens on port 0, which cannot be shared)",
    )
    return parser


def _init(config: ServerConfig, args: argparse.Namespace) -> int:
    from kubeca_server.verbs import run_init

    for line in run_init(config):
        print(line)
    return 0


def _migrate(config: ServerConfig, args: argparse.Namespace) -> int:
    from kubeca_server.verbs import migrate

    print(migrate(config))
    return 0


def _store(config: ServerConfig, args: argparse.Namespace) -> int:
    from kubeca_server.verbs import copy_store_from

    for line in copy_store_from(config, load_config(args.source)):
        print(line)
    return 0


def _audit(config: ServerConfig, args: argparse.Namespace) -> int:
    from kubeca_server.verbs import checkpoint_now, verify_audit

    if args.action == "checkpoint":
        signed = checkpoint_now(config)
        print(
            f"checkpoint at record {signed.seq}: {signed.head_hash}"
            if signed
            else "nothing new to checkpoint"
        )
        return 0
    pin = parse_pin(args.service_ca_hash, "--service-ca-hash") if args.service_ca_hash else None
    result = verify_audit(config, pin)
    print(
        f"{result.records} records, {result.checkpoints} signed checkpoints, "
        f"{result.certificates} certificates in the inventory"
    )
    for problem in result.problems:
        print(f"FAIL: {problem}")
    for note in result.notes:
        print(f"note: {note}")
    if result.problems:
        return 1
    print("the audit chain verifies")
    if not result.anchor_pinned:
        print(
            "note: the checkpoints' key was taken from the state directory itself; pass "
            "--service-ca-hash (printed by init) so a replaced service CA is caught too"
        )
    return 0


def _credentials(config: ServerConfig, args: argparse.Namespace) -> int:
    from kubeca_server.verbs import credential_name, current_credential, issue_credentials

    if not 1 <= args.lifetime_days <= 3650:
        raise InvalidArgument("--lifetime-days must be 1 to 3650")
    renews = current_credential(args.renew) if args.renew else None
    name = credential_name(renews) if renews is not None else args.name
    if renews is not None and args.name and args.name != name:
        raise InvalidArgument(f"--name {args.name[:64]!r} is not the renewed identity {name!r}")
    out = args.out or args.renew
    if not name or out is None:
        raise InvalidArgument("give --name and --out, or --renew DIR")
    out = issue_credentials(config, name, out, timedelta(days=args.lifetime_days), renews)
    verb = "renewed" if renews is not None else "wrote"
    print(f"{verb} {out}/client.crt, client.key (0600) and ca.crt for {name!r}")
    if name not in config.grants:
        print(f"note: [grants.{name}] is not in {config.path}: it may obtain nothing")
    print("client config:")
    print(f'  address = "{config.listen}"')
    print(f'  ca_file = "{out.resolve()}/ca.crt"')
    print(f'  cert_file = "{out.resolve()}/client.crt"')
    print(f'  key_file = "{out.resolve()}/client.key"')
    return 0


def _passphrase(args: argparse.Namespace) -> bytes | None:
    """From a file or the environment, never argv (it would show in ps)."""
    if args.passphrase_file is not None:
        try:
            data: bytes = args.passphrase_file.read_bytes()
            return data.rstrip(b"\r\n")
        except OSError as exc:
            raise InvalidArgument(
                f"--passphrase-file: {args.passphrase_file} cannot be read ({exc.strerror})"
            ) from None
    if args.passphrase_env is not None:
        value = os.environ.get(args.passphrase_env)
        if not value:
            raise InvalidArgument(f"--passphrase-env: {args.passphrase_env} is not set")
        return value.encode()
    return None


def _ca(config: ServerConfig, args: argparse.Namespace) -> int:
    from kubeca_server import verbs

    if args.action == "import":
        if args.authority is not None and (args.cert is None or args.key is None):
            raise InvalidArgument("--authority needs --cert and --key")
        if args.directory is not None and (args.cert is not None or args.key is not None):
            raise InvalidArgument("--from takes the whole directory; leave out --cert and --key")
        lines = verbs.import_authorities(
            config,
            directory=args.directory,
            authority=args.authority,
            cert=args.cert,
            key=args.key,
            passphrase=_passphrase(args),
        )
    elif args.action == "rotate":
        lines = [verbs.rotate(config, args.step, args.authority, getattr(args, "force", False))]
    else:
        lines = verbs.ca_status(config)
    for line in lines:
        print(line)
    return 0


def _serve(config: ServerConfig, args: argparse.Namespace) -> int:
    from kubeca_server.process import MAX_WORKERS, serve

    if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
        raise InvalidArgument(f"--workers must be between 1 and {MAX_WORKERS}")
    serve(config, args.workers)
    return 0


COMMANDS = {
    "init": _init,
    "migrate": _migrate,
    "audit": _audit,
    "store": _store,
    "credentials": _credentials,
    "ca": _ca,
    "serve": _serve,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging()
    try:
        return COMMANDS[args.command](load_config(args.config), args)
    except KubecaError as exc:
        print(f"kubeca-server: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # A bug: one line for the operator, the traceback in the (structured) log.
        structlog.get_logger("kubeca.cli").exception("cli.failed")
        print(f"kubeca-server: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
