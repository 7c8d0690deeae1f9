"""`make bench`: kubeca's issuance rate beside the HSM's raw rate and beside cfssl.

    .venv/bin/python bench/issuance.py        (what `make bench` runs)

For each CA key type (ECDSA P-256, RSA-2048), in one run on the same machine:
- the raw rate of the SoftHSM token with the project's own PKCS#11 backend, in one
  process and in two at once (each process has its own session, like each worker);
- kubeca serve with one worker per core, every safeguard on (mutual TLS, pkilint before
  signing, HSM signature, durable audit record and inventory row before the answer);
- the stack's floor at 16 connections (bench/grpc_floor.py "bare"): what cfssl does per
  certificate, on grpcio, cryptography and python-pkcs11 with the same HSM key, and
  none of kubeca's safeguards: what this stack costs before any safeguard;
- cfssl 1.2 serve (Debian's golang-cfssl) with a file CA key of the same type;
each server driven by the same native load generator (bench/go/loadgen, Go) with 1, 4, 16 and
64 connections (the floor at 16 only), one request in flight on each, all signing the same
P-256 leaf CSR.

It prints certs/s, p50/p99 latency, server CPU per certificate (from /proc), peak RSS per
process, the load generator's CPU, and the ratios to cfssl and to the raw HSM rate, and
draws throughput against concurrency to bench/results/throughput.png. Figures depend on
what else the machine runs: the "other cores" column says how much that was.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Run as a script, Python puts bench/ on sys.path, not the repo root that holds tests/.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, padding  # noqa: E402
from kubeca_client._proto.kubeca.v1 import kubeca_pb2 as pb  # noqa: E402
from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key  # noqa: E402

from bench import cfssl, grpc_floor, loadgen, procstat  # noqa: E402
from tests.support import (  # noqa: E402
    SOFTHSM_MODULE,
    RunningServer,
    Token,
    free_port,
    make_token,
    run_server_cli,
    write_server_config,
)

CA_ALGORITHMS = (KeyAlgorithm.ECDSA_P256, KeyAlgorithm.RSA_2048)
PROFILE = "admin"  # no parameters; signed by kubernetes-ca
CA_KEY_LABEL = "kubeca/kubernetes-ca"
FLOOR = "floor"  # the stack's floor: bench_floor
CONCURRENCY = (1, 4, 16, 64)
HEADLINE = 16  # the concurrency of the issue's goals, measured longer
PHASE_SECONDS = {1: 3.0, 4: 3.0, 16: 6.0, 64: 3.0}
RAW_SIGN_SECONDS = 2.0
RAW_PAYLOAD_BYTES = 600  # about a leaf's TBS, what the CA key really signs
WORKERS = os.cpu_count() or 1
RESULTS = REPO / "bench" / "results"


# --- the HSM's raw rate (in spawned processes: the module loads once per process) -----


def _signer(key: object) -> Callable[[bytes], bytes]:
    """The same signature call cryptography's CertificateBuilder makes for this key."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return lambda data: key.sign(data, ec.ECDSA(hashes.SHA256()))
    from cryptography.hazmat.primitives.asymmetric import rsa

    assert isinstance(key, rsa.RSAPrivateKey)
    return lambda data: key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def raw_sign_rate(conf: str, token_label: str, pin: str, start_at: float) -> float:
    """Signatures/second with the CA key from ``start_at`` (wall clock) for a fixed time."""
    os.environ["SOFTHSM2_CONF"] = conf
    from kubeca_client.errors import KubecaError
    from kubeca_server.keys.pkcs11_backend import Pkcs11Backend

    try:
        return _sign_for_a_while(Pkcs11Backend(SOFTHSM_MODULE, token_label, pin), start_at)
    except KubecaError as exc:
        # Its context does not pickle: say what it was in a form the parent can read.
        raise RuntimeError(f"{type(exc).__name__}: {exc.message}") from None


def _sign_for_a_while(backend: Any, start_at: float) -> float:
    try:
        key = backend.find_key(CA_KEY_LABEL)
        if key is None:
            raise RuntimeError(f"the token has no key {CA_KEY_LABEL!r}")
        sign, payload = _signer(key), os.urandom(RAW_PAYLOAD_BYTES)
        signature = sign(payload)  # untimed: caches the key handle; and check it is real
        public = key.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        else:
            public.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        time.sleep(max(0.0, start_at - time.time()))
        count, start = 0, time.perf_counter()
        while (now := time.perf_counter()) - start < RAW_SIGN_SECONDS:
            sign(payload)
            count += 1
        return count / (now - start)
    finally:
        backend.close()


def raw_rates(token: Token) -> dict[int, float]:
    """Signs/s of one process, and of two processes at once (added up)."""
    context = multiprocessing.get_context("spawn")
    rates: dict[int, float] = {}
    for processes in (1, 2):
        for attempt in (1, 2):
            try:
                with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
                    start_at = time.time() + 2.0  # after both have loaded the module
                    args = (str(token.conf), token.label, token.pin, start_at)
                    futures = [pool.submit(raw_sign_rate, *args) for _ in range(processes)]
                    rates[processes] = sum(f.result() for f in futures)
                break
            except RuntimeError as exc:
                # Seen once: two processes logging in to one SoftHSM token at the same
                # moment. Say so, and measure again.
                print(f"  raw HSM rate, {processes} process(es), attempt {attempt}: {exc}")
                if attempt == 2:
                    raise
    return rates


# --- one phase: the load generator against a server, CPU read around it ---------------


@dataclass(frozen=True)
class Phase:
    server: str  # "kubeca", FLOOR or "cfssl"
    algorithm: str
    connections: int
    completed: int
    errors: int
    first_error: str
    seconds: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_cert: float
    server_cores: float
    loadgen_cores: float
    other_cores: float
    idle_cores: float  # cores the machine left idle: the server waited on something else
    switches_per_cert: float  # context switches of the server's threads per certificate

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0


def measure(
    server: str,
    algorithm: KeyAlgorithm,
    root_pid: int,
    connections: int,
    args: list[str],
    seconds: float | None = None,  # None: the bench's own length for ``connections``
) -> Phase:
    marks: dict[str, float] = {}
    cpu_before: dict[int, float] = {}
    cpu_after: dict[int, float] = {}

    def start() -> None:
        cpu_before.update(procstat.cpu_seconds(root_pid))
        marks["machine"] = procstat.machine_busy_seconds()
        marks["idle"] = procstat.machine_idle_seconds()
        marks["switches"] = procstat.context_switches(root_pid)

    def end() -> None:
        cpu_after.update(procstat.cpu_seconds(root_pid))
        marks["machine"] = procstat.machine_busy_seconds() - marks["machine"]
        marks["idle"] = procstat.machine_idle_seconds() - marks["idle"]
        marks["switches"] = procstat.context_switches(root_pid) - marks["switches"]

    seconds = PHASE_SECONDS[connections] if seconds is None else seconds
    result = loadgen.run_phase(
        [*args, "-c", str(connections), "-seconds", str(seconds)], start, end
    )
    server_cpu = procstat.spent(cpu_before, cpu_after)
    other = max(0.0, marks["machine"] - server_cpu - result.loadgen_cpu_seconds)
    return Phase(
        server=server,
        algorithm=algorithm.value,
        connections=connections,
        completed=result.completed,
        errors=result.errors,
        first_error=result.first_error,
        seconds=result.seconds,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        server_cpu_ms_per_cert=1000 * server_cpu / result.completed if result.completed else 0,
        server_cores=server_cpu / result.seconds,
        loadgen_cores=result.loadgen_cpu_seconds / result.seconds,
        other_cores=other / result.seconds,
        idle_cores=marks["idle"] / result.seconds,
        switches_per_cert=marks["switches"] / result.completed if result.completed else 0,
    )


@dataclass(frozen=True)
class Run:
    algorithm: str
    raw: dict[int, float]
    phases: list[Phase]
    rss_mb: dict[str, list[float]]  # peak RSS of each process, by server


def issue_request(csr: bytes) -> bytes:
    # force_new: the same CSR every time, and the inventory would answer a repeat
    # without signing anything.
    message = pb.IssueCertificateRequest(profile=PROFILE, csr=csr, force_new=True)
    return message.SerializeToString()


def bench_kubeca(
    base: Path, token: Token, algorithm: KeyAlgorithm, csr: bytes, phases: list[Phase]
) -> tuple[dict[int, float], list[float]]:
    config = write_server_config(base / "server", token, key_algorithm=algorithm.value)
    run_server_cli(config, token, "init")
    raw = raw_rates(token)  # before the server starts: no competition for the cores
    server = RunningServer(config, token, workers=WORKERS)
    body = base / "issue.bin"
    body.write_bytes(issue_request(csr))
    server.start()
    try:
        assert server.process is not None
        args = [
            "-mode", "grpc", "-target", server.address, "-body", str(body),
            "-ca", str(server.service_ca), "-cert", str(server.credentials_dir / "client.crt"),
            "-key", str(server.credentials_dir / "client.key"),
        ]  # fmt: skip
        for connections in CONCURRENCY:
            phases.append(measure("kubeca", algorithm, server.process.pid, connections, args))
        workers = [
            mb for pid, mb in procstat.peak_rss_mb(server.process.pid).items()
            if procstat.is_worker(pid, server.process.pid, WORKERS)
        ]  # fmt: skip
    finally:
        server.stop()
    return raw, sorted(workers, reverse=True)


def bench_floor(
    base: Path, token: Token, algorithm: KeyAlgorithm, csr: bytes, phases: list[Phase]
) -> None:
    """The stack's floor (bench/grpc_floor.py "bare": cfssl's work per certificate on
    grpcio, cryptography and python-pkcs11, none of kubeca's safeguards) at the headline
    concurrency, with the kubernetes-ca key kubeca signed with, one process per core."""
    tls = grpc_floor.credentials(base / "floor")
    body = base / "issue.bin"
    body.write_bytes(issue_request(csr))
    environment = grpc_floor.token_environment(token.conf, token.label, token.pin)
    with grpc_floor.serving("bare", base / "floor", WORKERS, environment) as (root, address):
        args = ["-mode", "grpc", "-target", address, "-body", str(body), *tls]
        phases.append(measure(FLOOR, algorithm, root.pid, HEADLINE, args))


def bench_cfssl(
    base: Path, algorithm: KeyAlgorithm, csr: bytes, phases: list[Phase]
) -> list[float]:
    port = free_port()
    body = base / "cfssl-sign.json"
    body.write_bytes(cfssl.request_body(csr))
    url = f"http://127.0.0.1:{port}/api/v1/cfssl/sign"
    with cfssl.serving(base / "cfssl", algorithm, port) as process:
        args = ["-mode", "http", "-target", url, "-body", str(body)]
        for connections in CONCURRENCY:
            phases.append(measure("cfssl", algorithm, process.pid, connections, args))
        return list(procstat.peak_rss_mb(process.pid).values())


def bench_algorithm(algorithm: KeyAlgorithm, csr: bytes) -> Run:
    with tempfile.TemporaryDirectory(prefix="kubeca-bench-") as scratch:
        base = Path(scratch)
        phases: list[Phase] = []
        token = make_token(base / "token", label=f"bench-{algorithm.value.lower()}")
        raw, kubeca_rss = bench_kubeca(base, token, algorithm, csr, phases)
        print(f"  {algorithm.value}: kubeca done", flush=True)
        bench_floor(base, token, algorithm, csr, phases)
        print(f"  {algorithm.value}: stack floor done", flush=True)
        cfssl_rss = bench_cfssl(base, algorithm, csr, phases)
        print(f"  {algorithm.value}: cfssl done", flush=True)
        return Run(algorithm.value, raw, phases, {"kubeca": kubeca_rss, "cfssl": cfssl_rss})


# --- report ---------------------------------------------------------------------------

HEADER = (
    "server", "CA key", "conns", "certs", "errors", "certs/s", "p50 ms", "p99 ms",
    "srv CPU ms/cert", "srv cores", "loadgen cores", "other cores", "idle cores",
    "switches/cert",
)  # fmt: skip


def table(runs: Sequence[Run]) -> str:
    rows = [HEADER]
    for run in runs:
        for p in run.phases:
            rows.append(
                (
                    p.server, p.algorithm, str(p.connections), str(p.completed), str(p.errors),
                    f"{p.rate:.0f}", f"{p.p50_ms:.1f}", f"{p.p99_ms:.1f}",
                    f"{p.server_cpu_ms_per_cert:.2f}", f"{p.server_cores:.2f}",
                    f"{p.loadgen_cores:.2f}", f"{p.other_cores:.2f}", f"{p.idle_cores:.2f}",
                    f"{p.switches_per_cert:.1f}",
                )
            )  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def _at(run: Run, server: str, connections: int) -> Phase:
    return next(p for p in run.phases if p.server == server and p.connections == connections)


def summary(run: Run) -> list[str]:
    kubeca, peer = _at(run, "kubeca", HEADLINE), _at(run, "cfssl", HEADLINE)
    raw = run.raw.get(WORKERS, run.raw[max(run.raw)])
    cpu_ratio = (
        kubeca.server_cpu_ms_per_cert / peer.server_cpu_ms_per_cert
        if peer.server_cpu_ms_per_cert
        else float("nan")
    )
    floor = _at(run, FLOOR, HEADLINE)
    rss = run.rss_mb
    return [
        f"{run.algorithm} at {HEADLINE} connections: kubeca {kubeca.rate:.0f} certs/s "
        f"(p99 {kubeca.p99_ms:.1f} ms, {kubeca.server_cpu_ms_per_cert:.2f} ms CPU/cert), "
        f"cfssl {peer.rate:.0f} certs/s (p99 {peer.p99_ms:.1f} ms, "
        f"{peer.server_cpu_ms_per_cert:.2f} ms CPU/cert)",
        f"  kubeca/cfssl throughput {kubeca.rate / peer.rate:.2f}, CPU per cert "
        f"{cpu_ratio:.1f}x; raw HSM {run.raw[1]:.0f} signs/s in 1 process, "
        f"{run.raw.get(2, float('nan')):.0f} in 2: kubeca is {100 * kubeca.rate / raw:.0f}% "
        f"of the raw rate in {min(WORKERS, max(run.raw))} process(es)",
        f"  while kubeca served, {kubeca.idle_cores:.2f} of {os.cpu_count()} cores stood idle "
        f"and its threads switched {kubeca.switches_per_cert:.0f} times per certificate "
        f"(cfssl: {peer.idle_cores:.2f} idle, {peer.switches_per_cert:.0f} switches)",
        f"  stack floor (cfssl's work on grpcio, cryptography and python-pkcs11, no "
        f"safeguards): {floor.rate:.0f} certs/s (p99 {floor.p99_ms:.1f} ms, "
        f"{floor.server_cpu_ms_per_cert:.2f} ms CPU/cert), {floor.rate / peer.rate:.2f} of "
        f"cfssl's rate; kubeca is {100 * kubeca.rate / floor.rate:.0f}% of it",
        "  peak RSS MB: kubeca workers "
        + "/".join(f"{mb:.0f}" for mb in rss["kubeca"])
        + ", cfssl "
        + "/".join(f"{mb:.0f}" for mb in rss["cfssl"]),
    ]


def plot(runs: Sequence[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), squeeze=False)
    for axis, run in zip(axes[0], runs, strict=True):
        for server, style in (("kubeca", "o-"), ("cfssl", "s--")):
            phases = [p for p in run.phases if p.server == server]
            axis.plot(
                [p.connections for p in phases], [p.rate for p in phases], style, label=server
            )
        floor = _at(run, FLOOR, HEADLINE)
        axis.plot([floor.connections], [floor.rate], "k^", label="stack floor (no safeguards)")
        axis.axhline(run.raw[1], color="grey", linestyle=":", label="raw HSM, 1 process")
        if 2 in run.raw:
            axis.axhline(run.raw[2], color="black", linestyle=":", label="raw HSM, 2 processes")
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(CONCURRENCY), [str(c) for c in CONCURRENCY])
        axis.set_xlabel("concurrent connections")
        # Log scale: the raw HSM rate can be ten times either server's.
        axis.set_yscale("log")
        axis.set_ylabel("certificates / s (log)")
        axis.set_title(f"{run.algorithm} CA key")
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> int:
    began = time.monotonic()
    loadgen.build()
    print(
        f"kubeca bench: profile {PROFILE!r}, one P-256 leaf CSR, {os.cpu_count()} cores, "
        f"kubeca with {WORKERS} worker(s); connections {', '.join(map(str, CONCURRENCY))}",
        flush=True,
    )
    csr = build_csr(generate_private_key(KeyAlgorithm.ECDSA_P256))
    x509.load_pem_x509_csr(csr)  # what both servers get must be a well-formed CSR
    runs = [bench_algorithm(algorithm, csr) for algorithm in CA_ALGORITHMS]
    print()
    print(table(runs))
    print()
    for run in runs:
        print("\n".join(summary(run)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(runs, RESULTS / "throughput.png")
    (RESULTS / "results.json").write_text(
        json.dumps([{**asdict(r), "phases": [asdict(p) for p in r.phases]} for r in runs], indent=1)
    )
    print(f"\nplot: {RESULTS / 'throughput.png'}; numbers: {RESULTS / 'results.json'}")
    print(f"took {time.monotonic() - began:.0f} s")
    if any(p.other_cores >= 0.25 for r in runs for p in r.phases):
        print("note: other processes took CPU during some phases (other cores column)")
    failed = [p for r in runs for p in r.phases if p.errors]
    for p in failed:
        print(f"{p.server} {p.algorithm} c={p.connections}: {p.errors} errors; {p.first_error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
