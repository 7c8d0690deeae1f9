"""Prometheus metrics: one endpoint for the whole server, whichever worker did the work."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubeca_client.errors import NotFound
from kubeca_client.keys import KeyAlgorithm, build_csr, generate_private_key

from tests.support import (
    RunningServer,
    Token,
    free_port,
    make_token,
    run_server_cli,
    write_server_config,
)


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str, Token]]:
    base = tmp_path_factory.mktemp("metrics")
    token = make_token(base / "hsm")
    endpoint = f"127.0.0.1:{free_port()}"
    config = write_server_config(base / "server", token, extra=f'metrics_listen = "{endpoint}"')
    run_server_cli(config, token, "init")
    server = RunningServer(config, token, workers=2).start()
    try:
        yield server, f"http://{endpoint}/metrics", token
    finally:
        server.stop()


def _scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310  # loopback, our own
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("kubeca_"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _issue(server: RunningServer, count: int) -> None:
    options = (("grpc.use_local_subchannel_pool", 1),)
    for _ in range(count):
        with server.client(30, options) as client:
            key = generate_private_key(KeyAlgorithm.ECDSA_P256)
            client.issue_certificate("scheduler", build_csr(key))


def test_issuances_and_refusals_are_counted_by_profile_and_reason(
    metered: tuple[RunningServer, str, Token],
) -> None:
    server, url, _ = metered
    before = _scrape(url)
    _issue(server, 6)
    with server.client() as client, pytest.raises(NotFound):
        client.issue_certificate(
            "no-such-profile", build_csr(generate_private_key(KeyAlgorithm.ECDSA_P256))
        )
    after = _scrape(url)
    issued = 'kubeca_certificates_issued_total{authority="kubernetes-ca",profile="scheduler"}'
    refused = (
        "kubeca_requests_refused_total"
        '{method="IssueCertificate",profile="unknown",reason="NOT_FOUND"}'
    )
    assert after[issued] - before.get(issued, 0) == 6
    assert after[refused] - before.get(refused, 0) == 1


def test_latency_histograms_cover_hsm_signing_and_requests(
    metered: tuple[RunningServer, str, Token],
) -> None:
    server, url, _ = metered
    _issue(server, 2)
    samples = _scrape(url)
    assert samples["kubeca_hsm_sign_duration_seconds_count"] >= 2
    assert 0 < samples["kubeca_hsm_sign_duration_seconds_sum"] < 5
    assert samples['kubeca_request_duration_seconds_count{method="IssueCertificate"}'] >= 2
    assert any(name.startswith("kubeca_hsm_sign_duration_seconds_bucket") for name in samples)


def test_ca_expiry_is_reported_per_ca_in_seconds(
    metered: tuple[RunningServer, str, Token],
) -> None:
    _, url, _ = metered
    samples = _scrape(url)
    for authority in ("kubernetes-ca", "etcd-ca", "front-proxy-ca", "kubeca-service-ca"):
        left = samples[f'kubeca_ca_expiry_seconds{{authority="{authority}"}}']
        assert 3649 * 86400 < left <= 3650 * 86400
        labels = f'authority="{authority}"'
        generation = samples[f'kubeca_ca_generation_expiry_seconds{{{labels},generation="1"}}']
        assert 3649 * 86400 < generation <= 3650 * 86400
        assert samples[f"kubeca_ca_expiring{{{labels}}}"] == 0  # ten years left
        assert samples[f"kubeca_ca_key_imported{{{labels}}}"] == 0  # made in the HSM


def _wait_for(url: str, name: str, value: float, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _scrape(url).get(name) == value:
            return
        time.sleep(0.5)
    raise AssertionError(f"{name} did not become {value} within {timeout}s")


def test_hsm_availability_follows_the_token(metered: tuple[RunningServer, str, Token]) -> None:
    _, url, token = metered
    assert _scrape(url)["kubeca_hsm_up"] == 1
    tokens: Path = token.dir / "tokens"
    away = token.dir / "tokens.away"
    tokens.rename(away)
    tokens.mkdir()
    try:
        _wait_for(url, "kubeca_hsm_up", 0)
    finally:
        tokens.rmdir()
        away.rename(tokens)
    _wait_for(url, "kubeca_hsm_up", 1)


def test_metric_names_follow_prometheus_conventions(
    metered: tuple[RunningServer, str, Token],
) -> None:
    _, url, _ = metered
    for name in _scrape(url):
        assert re.fullmatch(r"kubeca_[a-z_]+(\{.*\})?", name), name
