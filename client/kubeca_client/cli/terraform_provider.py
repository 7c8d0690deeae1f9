"""kubeca terraform-provider install, dev-override: hand the provider to Terraform."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kubeca_client.tfprovider import install


def cmd_install(args: argparse.Namespace) -> int:
    mirror: Path = args.mirror or install.default_mirror()
    version = install.provider_version()
    path = install.install_into_mirror(mirror, version)
    # Only the CLI config block goes to stdout, so `... > terraformrc` writes a config.
    print(f"installed kubeca/kubeca {version} -> {path}", file=sys.stderr)
    if args.mirror is not None and mirror != install.default_mirror():
        print(
            "not one of Terraform's implied mirrors: put this in the CLI config "
            "(~/.terraformrc or $TF_CLI_CONFIG_FILE):",
            file=sys.stderr,
        )
        sys.stdout.write(install.mirror_cli_config(mirror.resolve()))
    return 0


def cmd_dev_override(args: argparse.Namespace) -> int:
    path = install.install_for_dev_override(args.dir)
    print(f"wrote {path}; put this in the CLI config instead of 'terraform init':", file=sys.stderr)
    sys.stdout.write(install.dev_override_cli_config(args.dir.resolve()))
    return 0


def add_commands(commands: Any) -> None:
    provider = commands.add_parser(
        "terraform-provider", help="install the native Terraform provider kubeca/kubeca"
    )
    actions = provider.add_subparsers(dest="action", required=True)
    installing = actions.add_parser(
        "install", help="into a filesystem mirror, for an offline 'terraform init'"
    )
    installing.add_argument(
        "--mirror",
        type=Path,
        help="the mirror directory (default ~/.terraform.d/plugins, which Terraform "
        "searches without any CLI config); elsewhere, the CLI config block is printed",
    )
    installing.set_defaults(run=cmd_install)
    override = actions.add_parser(
        "dev-override", help="write the provider to a directory and print a dev_overrides block"
    )
    override.add_argument(
        "--dir", type=Path, required=True, help="where to write terraform-provider-kubeca"
    )
    override.set_defaults(run=cmd_dev_override)
