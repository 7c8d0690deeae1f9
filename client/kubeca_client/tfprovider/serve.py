"""What Terraform starts: pyvider's plugin server, speaking protocol 6 on stdout."""

from __future__ import annotations

import sys


def main() -> None:
    from pyvider.cli.__main__ import main as pyvider_main

    # pyvider recognises Terraform by its magic cookie and a program name containing
    # terraform-provider (the launcher's); `provide` is its server command.
    sys.argv = [sys.argv[0], "provide"]
    pyvider_main()
