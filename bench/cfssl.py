"""The peer: cfssl 1.2 `serve` from Debian's golang-cfssl, with a file CA key of the
same type as kubeca's, signing the same CSR (reference: shared bench notes)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kubeca_client.keys import KeyAlgorithm

CONFIG = {
    "signing": {"default": {"expiry": "8760h", "usages": ["digital signature", "client auth"]}}
}


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory: Path, algorithm: KeyAlgorithm) -> tuple[Path, Path]:
    """A self-signed CA in the key forms cfssl 1.2 reads (SEC1 EC, PKCS#1 RSA)."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "ca-key.pem", directory / "ca.pem"
    if algorithm is KeyAlgorithm.RSA_2048:
        newkey, convert = ["rsa:2048"], ["rsa", "-traditional"]
    else:
        newkey, convert = ["ec", "-pkeyopt", "ec_paramgen_curve:P-256"], ["ec"]
    _openssl(
        "req", "-x509", "-newkey", *newkey, "-nodes", "-keyout", str(key), "-out", str(cert),
        "-subj", "/CN=bench-ca", "-days", "3650",
    )  # fmt: skip
    _openssl(*convert, "-in", str(key), "-out", str(key))
    return cert, key


def request_body(csr_pem: bytes) -> bytes:
    """The sign request: the CSR and the subject kubeca's "admin" profile gives it."""
    body = {
        "certificate_request": csr_pem.decode(),
        "subject": {"CN": "kubernetes-admin", "names": [{"O": "kubeadm:cluster-admins"}]},
    }
    return json.dumps(body).encode()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"cfssl serve exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"cfssl serve did not listen on {port} in {timeout}s")


@contextmanager
def serving(
    directory: Path, algorithm: KeyAlgorithm, port: int
) -> Iterator[subprocess.Popen[bytes]]:
    cert, key = make_ca(directory, algorithm)
    config = directory / "config.json"
    config.write_text(json.dumps(CONFIG))
    with (directory / "cfssl.log").open("ab") as log:
        process = subprocess.Popen(
            [
                "cfssl", "serve", "-address", "127.0.0.1", "-port", str(port),
                "-ca", str(cert), "-ca-key", str(key), "-config", str(config),
            ],
            stdout=log,
            stderr=log,
        )  # fmt: skip
    try:
        _wait_for_port(port, process, 30)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
