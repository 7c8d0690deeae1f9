#!/usr/bin/env python3
"""Create a development SoftHSM2 token under DIR, usable on its own.

    python3 softhsm/dev_token.py DIR [--label kubeca-dev]

Writes DIR/softhsm2.conf (token directory DIR/tokens), DIR/hsm-pin and
DIR/hsm-so-pin (random, 0600), and initializes a token with the label unless one
exists. softhsm2-util takes PINs only on its command line or at a terminal prompt;
kubeca keeps PINs off argv, so this answers the prompts through a pseudo-terminal.
Standard library only: it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import os
import pty
import secrets
import select
import subprocess
import sys
import time
from pathlib import Path

PROMPT_TIMEOUT = 20.0


def _secret_file(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_hex(12)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def token_exists(env: dict[str, str], label: str) -> bool:
    slots = subprocess.run(
        ["softhsm2-util", "--show-slots"], env=env, capture_output=True, text=True, check=True
    ).stdout
    return any(
        line.strip().startswith("Label:") and line.split(":", 1)[1].strip() == label
        for line in slots.splitlines()
    )


def init_token(env: dict[str, str], label: str, so_pin: str, pin: str) -> None:
    """Run softhsm2-util --init-token on a pty and answer its four PIN prompts."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        ["softhsm2-util", "--init-token", "--free", "--label", label],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
        start_new_session=True,
    )
    os.close(slave)
    answers = [so_pin, so_pin, pin, pin]
    transcript = b""
    deadline = time.monotonic() + PROMPT_TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break  # the child closed the terminal: it is done
                if not chunk:
                    break
                transcript += chunk
                # Each prompt ends with "PIN: "; answer as many as have appeared.
                while answers and transcript.count(b"PIN: ") > 4 - len(answers):
                    os.write(master, answers.pop(0).encode() + b"\n")
            elif process.poll() is not None:
                break
        code = process.wait(timeout=PROMPT_TIMEOUT)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    text = transcript.decode(errors="replace")
    for secret in (so_pin, pin):
        text = text.replace(secret, "***")
    if code != 0 or "has been initialized" not in text:
        raise SystemExit(f"dev_token: softhsm2-util failed to initialize the token:\n{text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--label", default="kubeca-dev")
    args = parser.parse_args()
    base: Path = args.dir.resolve()
    # The directory holds the PIN files and the token: for its owner alone.
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    base.chmod(0o700)
    (base / "tokens").mkdir(parents=True, exist_ok=True, mode=0o700)
    conf = base / "softhsm2.conf"
    if not conf.exists():
        conf.write_text(
            f"directories.tokendir = {base / 'tokens'}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = false\n"
        )
    pin = _secret_file(base / "hsm-pin")
    so_pin = _secret_file(base / "hsm-so-pin")
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    if token_exists(env, args.label):
        print(f"SoftHSM token {args.label!r} exists in {base / 'tokens'}")
        return 0
    init_token(env, args.label, so_pin, pin)
    print(f"SoftHSM token {args.label!r} created in {base / 'tokens'} (PIN in {base / 'hsm-pin'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
