"""Put the provider where `terraform init` finds it offline.

Terraform starts a provider by running an executable; ours is a two-line Python
launcher pinned to the interpreter kubeca is installed in (its venv), so it finds
pyvider and kubeca_client without any PATH. Two ways to hand it to Terraform:

- a filesystem mirror, unpacked layout
  `<mirror>/registry.terraform.io/kubeca/kubeca/<version>/<os>_<arch>/terraform-provider-kubeca_v<version>`;
  `~/.terraform.d/plugins` is one of Terraform's implied mirrors, so no CLI config is
  needed there; elsewhere, a `provider_installation { filesystem_mirror { ... } }` block.
  `terraform init` then records the provider's hash in .terraform.lock.hcl.
- `dev_overrides`: the launcher in a directory that a CLI config's dev_overrides block
  names; no `terraform init`, no lock file, and a warning on every run (for developing
  the provider itself).
"""

from __future__ import annotations

import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from kubeca_client.errors import ConfigError, InvalidArgument

HOSTNAME = "registry.terraform.io"
NAMESPACE = "kubeca"
TYPE = "kubeca"
SOURCE = f"{NAMESPACE}/{TYPE}"
EXECUTABLE = f"terraform-provider-{TYPE}"


def provider_version() -> str:
    """The provider's version is kubeca's (Terraform wants semantic versions)."""
    try:
        return version("kubeca")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0.0.0"


def default_mirror() -> Path:
    """Terraform's first implied local mirror on Unix."""
    return Path.home() / ".terraform.d" / "plugins"


def target() -> str:
    """Terraform's platform name, e.g. linux_amd64."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
    return f"{platform.system().lower()}_{arch.get(machine, machine)}"


def launcher(python: str | None = None) -> str:
    interpreter = python or sys.executable
    return (
        f"#!{interpreter}\n"
        "# The kubeca Terraform provider; written by `kubeca terraform-provider`.\n"
        "from kubeca_client.tfprovider.serve import main\n"
        "main()\n"
    )


def require_pyvider() -> None:
    try:
        import pyvider  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the Terraform provider needs pyvider: pip install 'kubeca[terraform]'"
        ) from None


def _write_executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.chmod(0o755)
    os.replace(temporary, path)


def install_into_mirror(mirror: Path, version: str) -> Path:
    """The launcher in ``mirror``'s unpacked layout; returns its path."""
    require_pyvider()
    if mirror.exists() and not mirror.is_dir():
        raise InvalidArgument(f"--mirror: {mirror} exists and is not a directory")
    path = mirror / HOSTNAME / NAMESPACE / TYPE / version / target() / f"{EXECUTABLE}_v{version}"
    _write_executable(path, launcher())
    return path


def install_for_dev_override(directory: Path) -> Path:
    require_pyvider()
    if directory.exists() and not directory.is_dir():
        raise InvalidArgument(f"--dir: {directory} exists and is not a directory")
    path = directory / EXECUTABLE
    _write_executable(path, launcher())
    return path


def mirror_cli_config(mirror: Path) -> str:
    """A CLI config (TF_CLI_CONFIG_FILE) that takes kubeca/kubeca from ``mirror`` only."""
    return (
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f"    path    = {_hcl(str(mirror))}\n"
        f'    include = ["{SOURCE}"]\n'
        "  }\n"
        "  direct {\n"
        f'    exclude = ["{SOURCE}"]\n'
        "  }\n"
        "}\n"
    )


def dev_override_cli_config(directory: Path) -> str:
    return (
        "provider_installation {\n"
        "  dev_overrides {\n"
        f'    "{SOURCE}" = {_hcl(str(directory))}\n'
        "  }\n"
        "  direct {}\n"
        "}\n"
    )


def _hcl(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "$${")
    return f'"{escaped}"'
