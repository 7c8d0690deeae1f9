"""CPU per certificate of the issuance pipeline alone, in one process, without gRPC.

    .venv/bin/python bench/stages.py [ECDSA-P256|RSA-2048] [count]

The same SoftHSM token, SQLite store and pkilint as `kubeca-server serve`, called
directly and single-threaded, so that the figure has no gRPC, TLS or contention in it;
then cProfile's view of the same loop, by the stages of issuance/pipeline.py.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key  # noqa: E402

from tests.support import OPERATOR, make_token, run_server_cli, write_server_config  # noqa: E402


def main() -> int:
    algorithm = KeyAlgorithm(sys.argv[1] if len(sys.argv) > 1 else "ECDSA-P256")
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    with tempfile.TemporaryDirectory(prefix="kubeca-stages-") as scratch:
        base = Path(scratch)
        token = make_token(base / "token", label="stages")
        config_path = write_server_config(base / "server", token, key_algorithm=algorithm.value)
        run_server_cli(config_path, token, "init")
        os.environ["SOFTHSM2_CONF"] = str(token.conf)
        from kubeca_server.app import open_core
        from kubeca_server.config import load_config
        from kubeca_server.issuance.model import Caller, IssueRequest

        core = open_core(load_config(config_path))
        try:
            caller = Caller(OPERATOR, "ipv4:127.0.0.1:1")
            request = IssueRequest(
                "admin", build_csr(generate_private_key(KeyAlgorithm.ECDSA_P256)), force_new=True
            )
            core.pipeline.issue(caller, request)  # untimed: the shape's first, whole lint
            began, wall = time.process_time(), time.perf_counter()
            for _ in range(count):
                core.pipeline.issue(caller, request)
            cpu, wall = time.process_time() - began, time.perf_counter() - wall
            print(
                f"{algorithm.value}: {1000 * cpu / count:.3f} ms CPU and "
                f"{1000 * wall / count:.3f} ms wall per certificate ({count}, one thread)"
            )
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(count):
                core.pipeline.issue(caller, request)
            profile.disable()
            stats = pstats.Stats(profile)
            stats.sort_stats(os.environ.get("SORT", "cumulative")).print_stats(45)
            if os.environ.get("CALLERS"):
                stats.print_callers(os.environ["CALLERS"])
        finally:
            core.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
