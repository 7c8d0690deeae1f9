"""Where a worker's time goes under load: py-spy on every kubeca worker during a phase.

    .venv/bin/python bench/spy.py [ECDSA-P256|RSA-2048] [seconds] [wall|gil] [connections]

Starts kubeca as `make bench` does, drives it with 16 connections (or as many as
given) from the native load
generator, records each worker with py-spy (collapsed stacks, bench/results/), and
prints the share of samples under the frames that matter on the hot path. "gil" (the
default) samples only the thread holding the GIL: where the Python CPU goes; "wall"
samples every busy thread, waits on locks and fsync included.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key  # noqa: E402

from bench import issuance, loadgen, procstat  # noqa: E402
from tests.support import RunningServer, make_token, run_server_cli, write_server_config  # noqa: E402

PY_SPY = Path(sys.executable).parent / "py-spy"
# Frames whose inclusive share is worth knowing, by a substring of "function (file)".
MARKERS = (
    "handle (kubeca_server/api/methods.py",
    "issue (kubeca_server/issuance/pipeline.py",
    "_permit (kubeca_server/issuance/pipeline.py",
    "_render (kubeca_server/issuance/pipeline.py",
    "_check (kubeca_server/issuance/pipeline.py",
    "prepare (kubeca_server/ca/",
    "check (kubeca_server/ca/lint.py",
    "sign (kubeca_server/ca/signer.py",
    "_check (kubeca_server/ca/signer.py",
    "_record (kubeca_server/issuance/pipeline.py",
    "commit (kubeca_server/ledger/audit.py",
    "__enter__ (kubeca_server/issuance/reservation.py",
    "__exit__ (kubeca_server/issuance/reservation.py",
    "authenticate (kubeca_server/issuance/permits.py",
    "_sign (kubeca_server/keys/pkcs11_backend.py",
    "sign (kubeca_server/keys/pkcs11_backend.py",
    "tls_caller (kubeca_server/api/caller.py",
)


def summarize(collapsed: Path) -> tuple[int, Counter[str], Counter[str]]:
    total, inclusive, leaf = 0, Counter[str](), Counter[str]()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] += n
        for marker in {m for m in MARKERS for f in frames if m in f}:
            inclusive[marker] += n
    return total, inclusive, leaf


def main() -> int:
    algorithm = KeyAlgorithm(sys.argv[1] if len(sys.argv) > 1 else "ECDSA-P256")
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    mode = sys.argv[3] if len(sys.argv) > 3 else "gil"
    connections = sys.argv[4] if len(sys.argv) > 4 else "16"
    loadgen.build()
    csr = build_csr(generate_private_key(KeyAlgorithm.ECDSA_P256))
    out = issuance.RESULTS
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kubeca-profile-") as scratch:
        base = Path(scratch)
        token = make_token(base / "token", label="profile")
        config = write_server_config(base / "server", token, key_algorithm=algorithm.value)
        run_server_cli(config, token, "init")
        body = base / "issue.bin"
        body.write_bytes(issuance.issue_request(csr))
        server = RunningServer(config, token, workers=issuance.WORKERS).start()
        try:
            assert server.process is not None
            root = server.process.pid
            workers = [
                p for p in procstat.tree(root) if procstat.is_worker(p, root, issuance.WORKERS)
            ]
            spies: list[tuple[subprocess.Popen[bytes], Path]] = []

            def start() -> None:
                for pid in workers:
                    path = out / f"profile-{algorithm.value}-{pid}.txt"
                    command = [
                        str(PY_SPY), "record", "--pid", str(pid), "--format", "raw",
                        "--rate", "250", "--duration", str(int(seconds)), "--output", str(path),
                        "--nonblocking", *(["--gil"] if mode == "gil" else []),
                    ]  # fmt: skip
                    spies.append((subprocess.Popen(command, stdout=subprocess.DEVNULL), path))

            args = [
                "-mode", "grpc", "-target", server.address, "-body", str(body),
                "-ca", str(server.service_ca), "-cert", str(server.credentials_dir / "client.crt"),
                "-key", str(server.credentials_dir / "client.key"), "-c", connections,
                "-seconds", str(seconds),
            ]  # fmt: skip
            result = loadgen.run_phase(args, start, lambda: None)
            for spy, _ in spies:
                spy.wait(timeout=60)
        finally:
            server.stop()
    print(
        f"{algorithm.value}, {connections} connections: {result.rate:.0f} certs/s, "
        f"p99 {result.p99_ms:.1f} ms"
    )
    for _, path in spies:
        total, inclusive, leaf = summarize(path)
        print(f"\n{path.name}: {total} samples (idle threads excluded by py-spy)")
        for marker, n in inclusive.most_common():
            print(f"  {100 * n / total:5.1f}%  {marker}")
        print("  top self time:")
        for frame, n in leaf.most_common(12):
            print(f"  {100 * n / total:5.1f}%  {frame[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
