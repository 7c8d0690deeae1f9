"""A/B: kubeca of another git revision against this tree, interleaved, in one run.

    .venv/bin/python bench/ab.py REV [ECDSA-P256|RSA-2048] [rounds] [connections]

REV must use the same state schema as this tree (e.g. `git merge-base main HEAD`).

On a machine shared with other work, figures from separate runs cannot be compared; so
each round starts REV's server and then this tree's on the same token, state and CSR,
and drives each for one phase with the native load generator. REV's server and client
packages are exported with `git archive` into var/ab/REV and put first on PYTHONPATH
of its server process (the bench, the token and the load generator stay this tree's).
"""

from __future__ import annotations

import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key  # noqa: E402

from bench import issuance, loadgen  # noqa: E402
from tests.support import RunningServer, make_token, run_server_cli, write_server_config  # noqa: E402

PHASE_SECONDS = 5.0


def export(rev: str) -> str:
    """REV's server and client packages, as a PYTHONPATH."""
    target = REPO / "var" / "ab" / rev.replace("/", "_")
    if not target.exists():
        archive = subprocess.run(
            ["git", "archive", rev, "server", "client"], cwd=REPO, check=True, capture_output=True
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    return f"{target / 'server'}:{target / 'client'}"


def main() -> int:
    rev = sys.argv[1]
    algorithm = KeyAlgorithm(sys.argv[2] if len(sys.argv) > 2 else "ECDSA-P256")
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    connections = int(sys.argv[4]) if len(sys.argv) > 4 else issuance.HEADLINE
    issuance.PHASE_SECONDS[connections] = PHASE_SECONDS
    sources = {rev: export(rev), "this tree": ""}
    loadgen.build()
    csr = build_csr(generate_private_key(KeyAlgorithm.ECDSA_P256))
    phases: dict[str, list[issuance.Phase]] = {name: [] for name in sources}
    with tempfile.TemporaryDirectory(prefix="kubeca-ab-") as scratch:
        base = Path(scratch)
        token = make_token(base / "token", label="ab")
        config = write_server_config(base / "server", token, key_algorithm=algorithm.value)
        run_server_cli(config, token, "init")
        body = base / "issue.bin"
        body.write_bytes(issuance.issue_request(csr))
        for _ in range(rounds):
            for name, path in sources.items():
                os.environ["PYTHONPATH"] = path  # the server subprocess inherits it
                server = RunningServer(config, token, workers=issuance.WORKERS).start()
                try:
                    assert server.process is not None
                    credentials = server.credentials_dir
                    args = [
                        "-mode", "grpc", "-target", server.address, "-body", str(body),
                        "-ca", str(server.service_ca), "-cert", str(credentials / "client.crt"),
                        "-key", str(credentials / "client.key"),
                    ]  # fmt: skip
                    phase = issuance.measure(
                        "kubeca", algorithm, server.process.pid, connections, args
                    )
                finally:
                    server.stop()
                phases[name].append(phase)
                print(
                    f"{name:>12}: {phase.rate:5.0f} certs/s, p99 {phase.p99_ms:6.1f} ms, "
                    f"{phase.server_cpu_ms_per_cert:.2f} ms CPU/cert, idle cores "
                    f"{phase.idle_cores:.2f}, {phase.switches_per_cert:.0f} switches/cert, "
                    f"other cores {phase.other_cores:.2f}, errors {phase.errors}",
                    flush=True,
                )
    for name, runs in phases.items():
        print(
            f"{name:>12} median: {statistics.median(p.rate for p in runs):.0f} certs/s, "
            f"p99 {statistics.median(p.p99_ms for p in runs):.1f} ms, "
            f"{statistics.median(p.server_cpu_ms_per_cert for p in runs):.2f} ms CPU/cert, "
            f"idle cores {statistics.median(p.idle_cores for p in runs):.2f}"
        )
    return 1 if any(p.errors for runs in phases.values() for p in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
