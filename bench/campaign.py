"""A hostile campaign against a real server: SoftHSM, mutual TLS, the real binary.

    .venv/bin/python bench/campaign.py [--requests N] [--seed S]    (make campaign)

Starts a fresh token and ``kubeca-server serve --workers 2``, then sends N (default
12,000) hostile requests over mutual TLS (and the bootstrap port for token attacks),
from 8 threads, in the categories below, and tallies the answers. It fails (exit 1)
if any answer is INTERNAL, any status is one a category may not give, or any issued
certificate fails the independent policy check (tests/fuzz/policy.py). The summary
goes to stdout and, as JSON, to --out (campaign.json in the working directory).
"""

from __future__ import annotations

import argparse
import base64
import collections
import ipaddress
import json
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from kubeca_client._proto.kubeca.v1 import kubeca_pb2 as pb  # noqa: E402
from kubeca_server.config import DEFAULT_MAX_REQUEST_BYTES  # noqa: E402

from tests.fuzz.policy import violations  # noqa: E402
from tests.fuzz.strategies import HOSTILE_CIDRS, HOSTILE_IPS, HOSTILE_NAMES  # noqa: E402
from tests.support import (  # noqa: E402
    RunningServer,
    make_token,
    run_server_cli,
    write_server_config,
)
from tests.unit.helpers import make_csr  # noqa: E402

SERVICE = "/kubeca.v1.CertificateAuthority/"
PROFILES = [
    "apiserver",
    "apiserver-kubelet-client",
    "front-proxy-client",
    "etcd-server",
    "etcd-peer",
    "etcd-healthcheck-client",
    "apiserver-etcd-client",
    "admin",
    "super-admin",
    "controller-manager",
    "scheduler",
    "kube-proxy",
    "kubelet-client",
    "kubelet-serving",
]
PARAMETER_NAMES = [
    "node_name",
    "advertise_address",
    "control_plane_endpoint",
    "service_cidr",
    "dns_domain",
    "extra_sans",
]
REFUSALS = {"INVALID_ARGUMENT", "PERMISSION_DENIED", "NOT_FOUND", "FAILED_PRECONDITION"}


@dataclass(frozen=True)
class Attack:
    category: str
    method: str
    request: bytes
    profile: str = ""
    node_name: str = ""
    token: str = ""  # sent on the bootstrap port when set


class Arsenal:
    """Hostile requests, made from a seeded generator so a run can be repeated."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)  # noqa: S311  (repeatable inputs, not secrets)
        self.keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(4)]
        self.base_csr = make_csr(self.keys[0], der=True)

    def pick(self, values: list[str]) -> str:
        r = self.random
        choice = r.random()
        if choice < 0.75:
            return r.choice(values)
        if choice < 0.9:
            return "".join(chr(r.randrange(0, 0x2FFF)) for _ in range(r.randrange(0, 30)))
        return r.choice(values) * r.randrange(2, 400)

    def parameters(self) -> dict[str, str]:
        r = self.random
        values: dict[str, str] = {}
        for name in r.sample(PARAMETER_NAMES, r.randrange(0, len(PARAMETER_NAMES) + 1)):
            if name == "service_cidr":
                values[name] = self.pick(HOSTILE_CIDRS)
            elif name in ("advertise_address",):
                values[name] = self.pick(HOSTILE_IPS)
            elif name == "extra_sans":
                values[name] = ",".join(
                    self.pick(HOSTILE_NAMES + HOSTILE_IPS) for _ in range(r.randrange(0, 5))
                )
            else:
                values[name] = self.pick(HOSTILE_NAMES)
        if r.random() < 0.1:
            values[self.pick(["bogus", "node_name "])] = "x"
        return values

    def issue(
        self,
        category: str,
        profile: str,
        csr: bytes,
        params: dict[str, str],
        lifetime: int | None = None,
    ) -> Attack:
        r = self.random
        if lifetime is None:
            lifetime = r.choice([0, 0, 0, -1, 60, 3600 * 24 * 30, 2**62, -(2**62)])
        request = pb.IssueCertificateRequest(
            profile=profile, csr=csr, parameters=params, lifetime_seconds=lifetime
        )
        return Attack(
            category,
            "IssueCertificate",
            request.SerializeToString(),
            profile,
            params.get("node_name", "").strip(),
        )

    def plausible(self) -> Attack:
        """A request that should succeed, with legal but unusual names: it is what puts
        certificates in front of the policy check."""
        r = self.random
        profile = r.choice(PROFILES[:8] + PROFILES[9:])  # super-admin is disabled
        node = r.choice(["node-1", "cp-1", "worker-7.example.com", "a" * 63])
        params = {"node_name": node, "advertise_address": r.choice(["10.0.0.21", "2001:db8::7"])}
        if profile not in ("apiserver", "etcd-server", "etcd-peer", "kubelet-serving"):
            params = {"node_name": node} if profile == "kubelet-client" else {}
        extra = [
            "api.example.com",
            "*.example.com",
            "192.168.0.9",
            "fd00::9",
            "node-1.svc.cluster.local",
        ]
        if profile in ("apiserver", "etcd-server", "etcd-peer", "kubelet-serving"):
            params["extra_sans"] = ",".join(r.sample(extra, r.randrange(0, 3)))
        if profile == "apiserver" and r.random() < 0.5:
            params["service_cidr"] = r.choice(["10.96.0.0/12", "fd00:10::/108", "172.20.0.0/16"])
            params["dns_domain"] = r.choice(["cluster.local", "corp.example"])
        lifetime = r.choice([0, 3600 * 24, 3600 * 24 * 90])
        return self.issue("plausible request", profile, self._csr(), params, lifetime)

    def mutated_csr(self) -> Attack:
        r = self.random
        data = bytearray(self.base_csr)
        for _ in range(r.randrange(1, 4)):
            data[r.randrange(len(data))] ^= 1 << r.randrange(8)
        raw = bytes(data)
        if r.random() < 0.3:
            raw = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(raw)
        return self.issue("mutated CSR", "admin", raw, {})

    def csr_version(self) -> Attack:
        data = bytearray(self.base_csr)
        at = data.index(bytes.fromhex("020100"))
        data[at + 2] = self.random.randrange(1, 256)
        return self.issue("CSR version not 0", "admin", bytes(data), {})

    def hostile_parameters(self) -> Attack:
        profile = self.pick(PROFILES) if self.random.random() < 0.95 else "x"
        return self.issue("hostile parameters", profile, self._csr(), self.parameters())

    def impersonation(self) -> Attack:
        r = self.random
        target = r.choice(
            [
                "*.default.svc.cluster.local",
                "*.default.svc",
                "*.default",
                "::ffff:10.96.0.1",
                "10.96.0.1",
                "kubernetes.default.svc.",
                "KUBERNETES.default",
                "*.default.svc.corp.example",
            ]
        )
        params = {"node_name": f"node-{r.randrange(1000)}", "extra_sans": target}
        if r.random() < 0.3:
            params = {"node_name": params["node_name"], "advertise_address": target}
        sans = None
        if r.random() < 0.5:
            try:
                sans = [x509.IPAddress(ipaddress.ip_address(target))]
            except ValueError:
                sans = [x509.DNSName(target)]
        csr = make_csr(r.choice(self.keys), sans=sans, der=True)
        return self.issue("kubelet-serving as the API server", "kubelet-serving", csr, params)

    def oversize(self) -> Attack:
        r = self.random
        char = r.choice(["x", "\u00e9", "\U0001d4c1", "%", "\x00"])
        count = r.randrange(1000, 3000)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, char * count)])
        if r.random() < 0.5:
            return self.issue("oversize echo", "admin", make_csr(self.keys[1], name, der=True), {})
        params = {self.pick(PARAMETER_NAMES): char * r.randrange(1000, 5000)}
        return self.issue("oversize echo", "kubelet-serving", self._csr(), params)

    def csr_sans(self) -> Attack:
        r = self.random
        names: list[x509.GeneralName] = []
        for _ in range(r.randrange(1, 4)):
            value = r.choice(HOSTILE_NAMES + HOSTILE_IPS)
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(value)))
            except ValueError:
                try:
                    names.append(x509.DNSName(value))
                except ValueError:
                    names.append(x509.DNSName("ok.example"))
        params = {"node_name": "node-1", "advertise_address": "10.0.0.21"}
        profile = r.choice(["kubelet-serving", "etcd-server", "apiserver", "admin"])
        csr = make_csr(r.choice(self.keys), sans=names, der=True)
        return self.issue("CSR asks for other SANs", profile, csr, params)

    def undecodable(self) -> Attack:
        r = self.random
        method = r.choice(["IssueCertificate", "RevokeCertificate", "GetCRL", "ListCertificates"])
        raw = bytes(r.randrange(256) for _ in range(r.randrange(1, 64)))
        return Attack("undecodable bytes", method, raw)

    def other_methods(self) -> Attack:
        r = self.random
        which = r.randrange(3)
        if which == 0:
            serial = self.pick(["0", "ff" * 40, "-1", "xyz", "1" * 100])
            request = pb.RevokeCertificateRequest(serial=serial, reason=self.pick(["x", ""]))
            return Attack("hostile revoke", "RevokeCertificate", request.SerializeToString())
        if which == 1:
            authority = self.pick(["kubernetes-ca", "nope", "etcd-ca", ""])
            request_crl = pb.GetCRLRequest(authority=authority)
            return Attack("hostile CRL/CA name", "GetCRL", request_crl.SerializeToString())
        tok = pb.CreateBootstrapTokenRequest(
            profiles=[self.pick(PROFILES)],
            node_name=self.pick(HOSTILE_NAMES),
            addresses=[self.pick(HOSTILE_IPS)],
            ttl_seconds=r.choice([-1, 0, 60, 2**62]),
        )
        return Attack("hostile token request", "CreateBootstrapToken", tok.SerializeToString())

    def bad_token(self) -> Attack:
        r = self.random
        token = r.choice(
            [
                "abcdef.0123456789abcdef",
                "".join(r.choice("abcdefghij0123456789") for _ in range(6))
                + "."
                + "".join(r.choice("abcdefghij0123456789") for _ in range(16)),
                "x" * r.randrange(1, 2000),
                "Bearer",
                "ABCDEF.0123456789ABCDEF",
            ]
        )
        params = {"node_name": "node-1"}
        return Attack(
            "forged bootstrap token",
            "IssueCertificate",
            pb.IssueCertificateRequest(
                profile="kubelet-client", csr=self._csr(), parameters=params
            ).SerializeToString(),
            "kubelet-client",
            "node-1",
            token,
        )

    def _csr(self) -> bytes:
        return make_csr(self.random.choice(self.keys), der=True)

    def next(self) -> Attack:
        makers: list[tuple[float, Callable[[], Attack]]] = [
            (0.10, self.plausible),
            (0.18, self.mutated_csr),
            (0.05, self.csr_version),
            (0.19, self.hostile_parameters),
            (0.10, self.impersonation),
            (0.05, self.oversize),
            (0.08, self.csr_sans),
            (0.08, self.undecodable),
            (0.09, self.other_methods),
            (0.08, self.bad_token),
        ]
        pick = self.random.random()
        for weight, make in makers:
            if pick < weight:
                return make()
            pick -= weight
        return makers[-1][1]()


@dataclass
class Tally:
    statuses: collections.Counter[str]
    by_category: dict[str, collections.Counter[str]]
    out_of_policy: list[str]
    unexpected: list[str]
    issued: int = 0
    largest_message: int = 0

    def __init__(self) -> None:
        self.statuses = collections.Counter()
        self.by_category = collections.defaultdict(collections.Counter)
        self.out_of_policy = []
        self.unexpected = []
        self.lock = threading.Lock()


def send(channels: dict[str, grpc.Channel], attack: Attack, tally: Tally) -> None:
    channel = channels["bootstrap" if attack.token else "operator"]
    call = channel.unary_unary(
        SERVICE + attack.method, request_serializer=None, response_deserializer=None
    )
    metadata = (("authorization", f"Bearer {attack.token}"),) if attack.token else ()
    problem = ""
    try:
        raw = call(attack.request, timeout=60, metadata=metadata)
        status = "OK"
        if attack.method == "IssueCertificate":
            response = pb.IssueCertificateResponse.FromString(raw)
            certificate = x509.load_pem_x509_certificate(response.certificate_pem.encode())
            broken = violations(attack.profile, certificate, attack.node_name)
            if broken:
                problem = f"{attack.category}: {broken}"
    except grpc.RpcError as exc:
        status = exc.code().name
        message = len((exc.details() or "").encode())
    else:
        message = 0
    with tally.lock:
        tally.statuses[status] += 1
        tally.by_category[attack.category][status] += 1
        tally.largest_message = max(tally.largest_message, message)
        if status == "OK" and attack.method == "IssueCertificate":
            tally.issued += 1
        if problem:
            tally.out_of_policy.append(problem)
        # The transport refuses a request over the server's cap before any decision.
        oversize = (
            status == "RESOURCE_EXHAUSTED" and len(attack.request) > DEFAULT_MAX_REQUEST_BYTES
        )
        if status not in REFUSALS | {"OK", "UNAUTHENTICATED"} and not oversize:
            tally.unexpected.append(f"{attack.category} -> {status}")


def run(requests: int, seed: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="kubeca-campaign-") as scratch:
        directory = Path(scratch)
        token = make_token(directory / "softhsm")
        config = write_server_config(directory / "server", token)
        run_server_cli(config, token, "init")
        server = RunningServer(config, token, workers=2).start()
        arsenal = Arsenal(seed)
        attacks = [arsenal.next() for _ in range(requests)]
        tally = Tally()
        channels = {
            "operator": grpc.secure_channel(server.address, server.credentials()),
            "bootstrap": grpc.secure_channel(
                server.bootstrap_address, server.credentials(operator=False)
            ),
        }
        started = time.monotonic()
        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                for future in [pool.submit(send, channels, a, tally) for a in attacks]:
                    future.result()
        finally:
            elapsed = time.monotonic() - started
            for channel in channels.values():
                channel.close()
            server.stop()
    return {
        "requests": requests,
        "seed": seed,
        "seconds": round(elapsed, 1),
        "statuses": dict(tally.statuses.most_common()),
        "internal": tally.statuses.get("INTERNAL", 0),
        "issued": tally.issued,
        "out_of_policy": len(tally.out_of_policy),
        "out_of_policy_examples": tally.out_of_policy[:10],
        "unexpected": tally.unexpected[:10],
        "largest_status_message_bytes": tally.largest_message,
        "by_category": {k: dict(v) for k, v in sorted(tally.by_category.items())},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12_000)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("campaign.json"))
    args = parser.parse_args()
    result = run(args.requests, args.seed)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    failed = result["internal"] or result["out_of_policy"] or result["unexpected"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
