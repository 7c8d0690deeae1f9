"""ExternalJWTSigner Sign: tokens/second and latency beside the HSM's raw rate.

    .venv/bin/python bench/signer.py        (what `make bench-signer` runs)

For the service-account key as RSA-2048 (the default) and ECDSA-P256, each on a fresh
SoftHSM token: the token's raw signing rate for that key with the project's PKCS#11
backend (one process, one thread, no server), then Sign through the server's own unix
socket and through `kubeca signer-proxy` (socket -> mutual TLS -> server) at 1 and 16
concurrent callers (threads, each on its own channel), as kube-apiserver calls it:
insecure credentials, authority localhost. Every Sign costs one HSM signature and one
audit record (durable before the answer; concurrent records share a commit), so the
raw rate is the ceiling. kube-apiserver waits on each Sign: p99 is the figure to read.
"""

from __future__ import annotations

import base64
import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from kubeca_client._proto.externaljwt.v1 import externaljwt_pb2 as pb  # noqa: E402
from kubeca_client._proto.externaljwt.v1 import externaljwt_pb2_grpc as pb_grpc  # noqa: E402

from tests.support import (  # noqa: E402
    BIN,
    SOFTHSM_MODULE,
    RunningServer,
    Token,
    make_token,
    run_server_cli,
    write_server_config,
)

ALGORITHMS = ("RSA-2048", "ECDSA-P256")
KEY_LABEL = "kubeca/service-account"
ISSUER = "https://kubernetes.default.svc.cluster.local"
PHASE_SECONDS = 4.0
RAW_SECONDS = 2.0
CALLERS = (1, 16)
# About the size of kube-apiserver's signing input for a pod-bound token.
RAW_PAYLOAD_BYTES = 900


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims() -> str:
    now = int(time.time())
    return b64(
        json.dumps(
            {
                "aud": [ISSUER],
                "exp": now + 3600,
                "iat": now,
                "nbf": now,
                "iss": ISSUER,
                "jti": str(uuid.uuid4()),
                "sub": "system:serviceaccount:default:bench",
                "kubernetes.io": {
                    "namespace": "default",
                    "serviceaccount": {"name": "bench", "uid": str(uuid.uuid4())},
                    "pod": {"name": "bench-pod", "uid": str(uuid.uuid4())},
                },
            }
        ).encode()
    )


# --- the HSM's raw rate (a spawned process: the module reads SOFTHSM2_CONF once) ---


def raw_sign_rate(conf: str, token_label: str, pin: str, seconds: float) -> float:
    os.environ["SOFTHSM2_CONF"] = conf
    from kubeca_server.keys import sign_bytes, verify_signature
    from kubeca_server.keys.pkcs11_backend import Pkcs11Backend

    backend = Pkcs11Backend(SOFTHSM_MODULE, token_label, pin)
    try:
        key = backend.find_key(KEY_LABEL)
        if key is None:
            raise RuntimeError(f"token {token_label!r} has no key {KEY_LABEL!r}")
        payload = os.urandom(RAW_PAYLOAD_BYTES)
        # Untimed, and checked: the first call also caches the key handle.
        verify_signature(key.public_key(), sign_bytes(key, payload), payload)
        count = 0
        start = now = time.perf_counter()
        while now - start < seconds:
            sign_bytes(key, payload)
            count += 1
            now = time.perf_counter()
        return count / (now - start)
    finally:
        backend.close()


def measure_raw(token: Token) -> float:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(
            raw_sign_rate, str(token.conf), token.label, token.pin, RAW_SECONDS
        ).result()


# --- load ------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    path: str
    callers: int
    completed: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.completed / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def run_load(socket: Path, callers: int, seconds: float, path: str) -> Result:
    payloads = [claims() for _ in range(64)]
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(callers)]
    errors = [0] * callers
    start_line = threading.Barrier(callers + 1)

    def caller(index: int) -> None:
        # A channel option unique to the caller keeps gRPC from sharing one connection.
        options = [("grpc.default_authority", "localhost"), ("kubeca.bench.caller", index)]
        with grpc.insecure_channel(f"unix://{socket}", options=options) as channel:
            stub = pb_grpc.ExternalJWTSignerStub(channel)
            stub.Metadata(pb.MetadataRequest(), timeout=10)  # connected before timing
            start_line.wait()
            n = 0
            while not stop.is_set():
                began = time.perf_counter()
                try:
                    stub.Sign(pb.SignJWTRequest(claims=payloads[n % len(payloads)]), timeout=30)
                except grpc.RpcError:
                    errors[index] += 1
                else:
                    latencies[index].append(time.perf_counter() - began)
                n += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    start_line.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = [value for per in latencies for value in per]
    return Result(path, callers, len(flat), sum(errors), elapsed, flat)


def start_server(directory: Path, algorithm: str) -> tuple[Token, RunningServer, Path]:
    token = make_token(directory / "hsm")
    socket = directory / "signer.sock"
    config = write_server_config(
        directory / "server",
        token,
        extra=f'[service_account]\nkey_algorithm = "{algorithm}"\nsocket = "{socket}"\n',
    )
    config.write_text(config.read_text() + "service_account_signing = true\n")
    run_server_cli(config, token, "init")
    return token, RunningServer(config, token).start(), socket


def start_proxy(server: RunningServer, directory: Path) -> tuple[subprocess.Popen[bytes], Path]:
    socket = directory / "proxy.sock"
    config = server.client_config(directory / "client.toml")
    process = subprocess.Popen(
        [str(BIN / "kubeca"), "--config", str(config), "signer-proxy", "--socket", str(socket)],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not socket.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("kubeca signer-proxy did not start")
        time.sleep(0.05)
    return process, socket


def bench(algorithm: str, directory: Path, report: Callable[[str], None]) -> None:
    token, server, socket = start_server(directory, algorithm)
    try:
        raw = measure_raw(token)
        report(f"| {algorithm} | HSM raw, 1 thread | {raw:,.0f} | | |")
        proxy, proxy_socket = start_proxy(server, directory)
        try:
            for path, where in (("socket", socket), ("proxy", proxy_socket)):
                for callers in CALLERS:
                    result = run_load(where, callers, PHASE_SECONDS, path)
                    errors = f" ({result.errors} errors)" if result.errors else ""
                    report(
                        f"| {algorithm} | {path}, {callers} caller{'s' if callers > 1 else ''} "
                        f"| {result.rate:,.0f}{errors} | {result.percentile(0.5) * 1000:.1f} ms "
                        f"| {result.percentile(0.99) * 1000:.1f} ms |"
                    )
        finally:
            proxy.send_signal(signal.SIGTERM)
            proxy.wait(timeout=30)
    finally:
        server.stop()


def main() -> int:
    print(__doc__.split("\n\n")[0].strip())
    print(f"{os.cpu_count()} cores; {PHASE_SECONDS:g} s per phase\n")
    print("| key | path | tokens/s | p50 | p99 |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="kubeca-bench-signer-") as scratch:
        for algorithm in ALGORITHMS:
            bench(algorithm, Path(scratch) / algorithm, lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
