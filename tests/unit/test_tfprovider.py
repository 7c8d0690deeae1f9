"""kubeca_client.tfprovider: the plan-time checks, the connection from a provider block,
and the launcher in a mirror, without Terraform (test_terraform_provider.py runs it)."""

from __future__ import annotations

import stat
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kubeca_client.cli import main
from kubeca_client.client import ProfileInfo, ProfileParameter
from kubeca_client.errors import ConfigError, InvalidArgument
from kubeca_client.tfprovider import checks, install
from kubeca_client.tfprovider.provider import connection_from

KEY = ec.generate_private_key(ec.SECP256R1())


def _csr_pem() -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return builder.sign(KEY, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def _profile(enabled: bool = True) -> ProfileInfo:
    return ProfileInfo(
        name="etcd-server",
        authority="etcd-ca",
        common_name="{node_name}",
        organizations=(),
        key_usages=(),
        extended_key_usages=(),
        san_rule="",
        parameters=(
            ProfileParameter("node_name", "the node's name", True, ""),
            ProfileParameter("extra_sans", "more SANs", False, ""),
        ),
        default_lifetime_seconds=0,
        max_lifetime_seconds=0,
        enabled=enabled,
    )


def test_a_good_csr_has_no_problem() -> None:
    assert checks.csr_problem(_csr_pem()) is None


def test_a_private_key_in_csr_pem_is_named_as_such() -> None:
    key_pem = KEY.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    assert "holds a private key" in str(checks.csr_problem(key_pem))


def test_a_csr_whose_signature_does_not_verify_is_refused() -> None:
    pem = _csr_pem()
    der = x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER)
    tampered = der[:-3] + bytes([der[-3] ^ 1]) + der[-2:]  # inside the signature
    tampered_pem = x509.load_der_x509_csr(tampered).public_bytes(serialization.Encoding.PEM)
    assert "does not verify" in str(checks.csr_problem(tampered_pem.decode()))


@pytest.mark.parametrize("text", ["", "AAAA", "-----BEGIN CERTIFICATE REQUEST-----\nAA\n"])
def test_what_is_no_csr_says_so_without_asn1_jargon(text: str) -> None:
    problem = str(checks.csr_problem(text))
    assert problem.startswith("csr_pem is not a PEM certificate request")
    assert "asn1" not in problem.lower()


def test_parameters_of_known_kinds_are_parsed_and_others_left_to_the_service() -> None:
    problems = checks.parameter_problems(
        {"node_name": "CP_1", "advertise_address": "10.0.0.300", "colour": "blue"}
    )
    assert len(problems) == 2
    assert "parameter advertise_address: '10.0.0.300' is not an IP address" in problems[0]
    assert "parameter node_name: 'CP_1'" in problems[1]
    assert (
        checks.parameter_problems({"node_name": "cp-1", "extra_sans": "a.example, 10.1.1.1"}) == []
    )


def test_unprintable_parameters_are_refused() -> None:
    assert checks.parameter_problems({"node_name": "cp-1\n"}) != []


def test_durations_and_reasons_are_checked_offline() -> None:
    problems = checks.offline_problems(
        csr_pem=None,
        parameters=None,
        lifetime="ten minutes",
        renew_before="720h",
        revocation_reason="because",
    )
    assert len(problems) == 2
    assert problems[0].startswith("lifetime: 'ten minutes' is not a duration")
    assert problems[1].startswith("revocation_reason: unknown revocation reason 'because'")
    assert (
        checks.offline_problems(
            csr_pem=_csr_pem(),
            parameters={},
            lifetime="90d",
            renew_before="1h30m",
            revocation_reason="keyCompromise",
        )
        == []
    )


def test_the_profile_and_its_parameters_are_checked_against_what_the_service_offers() -> None:
    offered = [_profile()]
    assert checks.profile_problems(offered, "etcd-server", {"node_name": "cp-1"}) == []
    (unknown,) = checks.profile_problems(offered, "etcd-serverr", {})
    assert unknown == "the service offers no profile 'etcd-serverr' (it offers: etcd-server)"
    problems = checks.profile_problems(offered, "etcd-server", {"colour": "blue"})
    assert problems == [
        "profile etcd-server does not take parameter 'colour' (it takes: extra_sans, node_name)",
        "profile etcd-server needs parameter node_name (the node's name)",
    ]
    assert checks.profile_problems([_profile(enabled=False)], "etcd-server", {}) == [
        "profile etcd-server is disabled on the service"
    ]


def test_renewal_is_due_in_the_last_third_or_renew_before_expiry() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=30)
    assert not checks.renewal_due(start, end, start + timedelta(days=19), None)
    assert checks.renewal_due(start, end, start + timedelta(days=20), None)
    assert not checks.renewal_due(start, end, end - timedelta(days=3), timedelta(days=2))
    assert checks.renewal_due(start, end, end - timedelta(days=2), timedelta(days=2))
    assert checks.renewal_due(start, end, start, timedelta(days=30))


def test_times_are_rfc3339_as_hashicorp_tls_writes_them() -> None:
    moment = datetime(2026, 12, 2, 1, 2, 3, tzinfo=UTC)
    assert checks.rfc3339(moment) == "2026-12-02T01:02:03Z"
    assert checks.parse_rfc3339("2026-12-02T01:02:03Z") == moment


# --- the provider block --------------------------------------------------------------


def _block(**fields: object) -> SimpleNamespace:
    names = (
        "client_config",
        "address",
        "ca_file",
        "ca_cert_hash",
        "cert_file",
        "key_file",
        "timeout_seconds",
    )
    return SimpleNamespace(**{name: fields.get(name) for name in names})


def test_a_block_with_every_field_is_the_connection() -> None:
    pin = "sha256:" + "ab" * 32
    config = connection_from(
        _block(
            address="ca.example:7443",
            ca_cert_hash=pin.upper().replace("SHA256", "sha256"),
            cert_file="op.crt",
            key_file="op.key",
            timeout_seconds=5,
        )
    )
    assert (config.address, config.ca_cert_hash, config.timeout_seconds) == (
        "ca.example:7443",
        pin,
        5.0,
    )
    assert (config.cert_file, config.key_file) == (Path("op.crt"), Path("op.key"))


def test_an_empty_block_falls_back_to_the_environment_or_says_what_it_needs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBECA_CLIENT_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="needs client_config or address"):
        connection_from(None)
    path = tmp_path / "client.toml"
    path.write_text('address = "ca.example:7443"\nca_file = "ca.crt"\n')
    monkeypatch.setenv("KUBECA_CLIENT_CONFIG", str(path))
    assert connection_from(_block()).ca_file == tmp_path / "ca.crt"


def test_a_pin_beside_a_client_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="remove ca_cert_hash"):
        connection_from(
            _block(client_config=str(tmp_path / "c.toml"), ca_cert_hash="sha256:" + "0" * 64)
        )


@pytest.mark.parametrize("timeout", [0, -1, 301])
def test_a_timeout_out_of_bounds_is_refused(timeout: float) -> None:
    with pytest.raises(ConfigError, match="timeout_seconds"):
        connection_from(_block(address="a:1", timeout_seconds=timeout))


# --- installing ----------------------------------------------------------------------


def test_the_launcher_lands_in_the_unpacked_mirror_layout(tmp_path: Path) -> None:
    path = install.install_into_mirror(tmp_path, "1.2.3")
    expected = (
        tmp_path
        / "registry.terraform.io/kubeca/kubeca/1.2.3"
        / install.target()
        / "terraform-provider-kubeca_v1.2.3"
    )
    assert path == expected
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    first, *_ = path.read_text().splitlines()
    assert first == f"#!{sys.executable}"


def test_the_cli_configs_take_kubeca_from_the_mirror_or_the_override(tmp_path: Path) -> None:
    odd = tmp_path / 'a "quoted" ${dir}'
    text = install.mirror_cli_config(odd)
    assert 'include = ["kubeca/kubeca"]' in text and 'exclude = ["kubeca/kubeca"]' in text
    assert '\\"quoted\\" $${dir}' in text
    assert f'"kubeca/kubeca" = "{tmp_path}' in install.dev_override_cli_config(tmp_path)
    written = install.install_for_dev_override(tmp_path / "plugins")
    assert written == tmp_path / "plugins" / "terraform-provider-kubeca"


def test_install_defaults_to_terraforms_implied_mirror_and_prints_no_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["terraform-provider", "install"]) == 0
    out, err = capsys.readouterr()
    assert out == ""  # nothing to configure: Terraform searches this mirror itself
    found = list((tmp_path / ".terraform.d" / "plugins").rglob("terraform-provider-kubeca_v*"))
    assert len(found) == 1 and str(found[0]) in err


def test_install_elsewhere_prints_the_cli_config_on_stdout_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["terraform-provider", "install", "--mirror", str(tmp_path / "m")]) == 0
    out, _ = capsys.readouterr()
    assert out == install.mirror_cli_config((tmp_path / "m").resolve())
