"""Hostile inputs, shared by the fuzz tests and the campaign (bench/campaign.py).

``KUBECA_FUZZ_SCALE`` multiplies every test's example count: ``make test`` runs the
suite at 1 (over 10,000 cases), ``make fuzz`` at 10.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SCALE = max(1, int(os.environ.get("KUBECA_FUZZ_SCALE", "1")))


def examples(count: int) -> settings:
    # No deadline: the suite asserts behaviour, never timing; the database is off so a
    # run depends on nothing a previous one left behind.
    return settings(
        max_examples=count * SCALE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


# Values an attacker or a careless operator would try, each a whole parameter value.
HOSTILE_NAMES = [
    "node-1",
    "cp-1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "KUBERNETES.default.svc",
    "kubernetes.default.svc.",
    "*.default.svc.cluster.local",
    "*.default.svc",
    "*.default",
    "*.svc.cluster.local",
    "*.cluster.local",
    "*",
    "*.*.svc",
    "a.*.b",
    "localhost",
    "x" * 300,
    "\u0130stanbul",
    "node\x00x",
    "node\n1",
    "-node",
    "node.1",
    "xn--e1afmkfd",
]
HOSTILE_IPS = [
    "10.96.0.1",
    "::ffff:10.96.0.1",
    "::ffff:a60:1",
    "0.0.0.0",
    "::",
    "::ffff:0.0.0.0",
    "224.0.0.1",
    "ff00::1",
    "::ffff:224.0.0.1",
    "127.0.0.1",
    "::1",
    "fe80::1%eth0",
    "10.0.0.21",
    "192.168.10.21",
    "2001:db8::1",
    "010.096.000.001",
    "1.2.3.4/32",
    "300.1.1.1",
]
HOSTILE_CIDRS = [
    "10.96.0.0/12",
    "224.0.0.0/4",
    "ff00::/8",
    "::ffff:0.0.0.0/96",
    "10.96.0.0/32",
    "10.96.0.1/12",
    "0.0.0.0/0",
    "10.96.0.0/12,fd00::/108",
    "10.96.0.0/12,ff00::/120",
    "a,b,c",
]


def _mixed(values: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(values), st.text(max_size=40))


def san_list() -> st.SearchStrategy[str]:
    return st.lists(_mixed(HOSTILE_NAMES + HOSTILE_IPS), max_size=6).map(",".join)


PARAMETER_VALUES = {
    "node_name": _mixed(HOSTILE_NAMES),
    "advertise_address": _mixed(HOSTILE_IPS),
    "control_plane_endpoint": st.one_of(
        _mixed(HOSTILE_NAMES + HOSTILE_IPS),
        st.tuples(st.sampled_from(HOSTILE_NAMES + HOSTILE_IPS), st.integers(-1, 70000)).map(
            lambda t: f"{t[0]}:{t[1]}"
        ),
        st.sampled_from(HOSTILE_IPS).map(lambda ip: f"[{ip}]:6443"),
    ),
    "service_cidr": _mixed(HOSTILE_CIDRS),
    "dns_domain": _mixed(["cluster.local", "corp.example", "", "Cluster.Local", "a..b"]),
    "extra_sans": san_list(),
}


def parameters() -> st.SearchStrategy[dict[str, str]]:
    """A parameter map: mostly known names with hostile values, sometimes unknown keys."""
    known = st.dictionaries(
        st.sampled_from(sorted(PARAMETER_VALUES)), st.just(""), max_size=len(PARAMETER_VALUES)
    ).flatmap(lambda keys: st.fixed_dictionaries({k: PARAMETER_VALUES[k] for k in keys}))
    unknown = st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=2)
    return st.one_of(known, known, known, st.tuples(known, unknown).map(lambda t: {**t[1], **t[0]}))
