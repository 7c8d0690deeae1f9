"""The native provider kubeca/kubeca under the real terraform binary, against a real kubeca.

Every test has its own working directory, HOME, CLI config (TF_CLI_CONFIG_FILE) and
data directory, with TF_PLUGIN_CACHE_DIR unset: terraform finds the provider only in
the filesystem mirror `kubeca terraform-provider install` wrote, offline, and no test
depends on another having run. Where a plan's exact actions matter, the plan is saved
and that plan applied, so nothing can change between the two.

The module's server grants the operator `terraform` one node (cp-1 at 10.0.0.10) and
revocation, so a SAN outside that is a refusal.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from kubeca_client.client import Client
from kubeca_client.config import load_client_config

from tests.support import BIN, RunningServer, make_token, run_server_cli, write_server_config

pytestmark = pytest.mark.integration

TERRAFORM = shutil.which("terraform")
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "terraform" / "provider" / "main.tf"
IDENTITY = "terraform"
NODE, ADDRESS = "cp-1", "10.0.0.10"
GRANT = f"""
[grants.{IDENTITY}]
profiles = ["*"]
node_names = ["{NODE}"]
san_dns = ["{NODE}", "localhost", "kubernetes", ".kubernetes.default", "kubernetes.default"]
san_cidrs = ["{ADDRESS}/32", "127.0.0.1/32", "::1/128", "10.96.0.0/12"]
revoke = true
"""
LEAVES = (
    "apiserver",
    "apiserver-kubelet-client",
    "apiserver-etcd-client",
    "front-proxy-client",
    "etcd/server",
    "etcd/peer",
    "etcd/healthcheck-client",
)
ISSUER = {
    "apiserver": "kubernetes-ca",
    "apiserver-kubelet-client": "kubernetes-ca",
    "apiserver-etcd-client": "etcd-ca",
    "front-proxy-client": "front-proxy-ca",
    "etcd/server": "etcd-ca",
    "etcd/peer": "etcd-ca",
    "etcd/healthcheck-client": "etcd-ca",
}

if TERRAFORM is None:
    pytest.skip("terraform is not installed on this machine", allow_module_level=True)


@dataclass(frozen=True)
class Deployment:
    server: RunningServer
    client_config: Path

    def client(self) -> Client:
        return Client.from_config(load_client_config(self.client_config))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("tfprovider-server")
    token = make_token(root / "softhsm")
    config = write_server_config(root / "server", token, extra=GRANT)
    run_server_cli(config, token, "init")
    server = RunningServer(config, token).start()
    credentials = root / "terraform-operator"
    run_server_cli(
        config, token, "credentials", "issue", "--name", IDENTITY, "--out", str(credentials)
    )
    client_config = root / "terraform.toml"
    client_config.write_text(
        f'address = "{server.address}"\ntimeout_seconds = 20\n'
        f'ca_file = "{server.service_ca}"\n'
        f'cert_file = "{credentials / "client.crt"}"\nkey_file = "{credentials / "client.key"}"\n'
    )
    yield Deployment(server, client_config)
    server.stop()


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The provider installed into a mirror by the CLI, and the CLI config it printed."""
    directory = tmp_path_factory.mktemp("tf-mirror")
    done = subprocess.run(
        [str(BIN / "kubeca"), "terraform-provider", "install", "--mirror", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return directory, done.stdout


class Workspace:
    """One Terraform working directory, isolated from every other and from the machine."""

    def __init__(self, directory: Path, cli_config: str, variables: dict[str, str]) -> None:
        self.dir = directory
        home = directory / "home"
        home.mkdir()
        (directory / "terraformrc").write_text(cli_config)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "KUBECA_"))}
        env.update(
            {
                "HOME": str(home),
                "TF_CLI_CONFIG_FILE": str(directory / "terraformrc"),
                "TF_DATA_DIR": str(directory / ".terraform"),
                "TF_IN_AUTOMATION": "1",
                "CHECKPOINT_DISABLE": "1",
                **{f"TF_VAR_{k}": v for k, v in variables.items()},
            }
        )
        self.env = env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert TERRAFORM is not None
        return subprocess.run(
            [TERRAFORM, *args, "-no-color"],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"terraform {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def init(self) -> None:
        self.ok("init", "-input=false")

    def state(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.dir / "terraform.tfstate").read_text())
        return loaded

    def outputs(self) -> dict[str, Any]:
        # From the state file: `terraform output` would start the provider once more.
        return {name: value["value"] for name, value in self.state()["outputs"].items()}


def _workspace(
    tmp_path: Path, mirror: tuple[Path, str], main_tf: str, **variables: str
) -> Workspace:
    (tmp_path / "main.tf").write_text(main_tf)
    return Workspace(tmp_path, mirror[1], variables)


def _csr(directory: Path, name: str) -> ec.EllipticCurvePrivateKey:
    """A key and its CSR (empty subject: the profile decides), as a node makes them."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    path = directory / f"{name}.csr"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(csr.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM))
    return key


def _spki(subject: x509.Certificate | ec.EllipticCurvePrivateKey) -> bytes:
    return subject.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _provider_block(client_config: Path) -> str:
    return (
        'terraform {\n  required_providers {\n    kubeca = { source = "kubeca/kubeca" }\n'
        f'  }}\n}}\nprovider "kubeca" {{\n  client_config = "{client_config}"\n}}\n'
    )


def _planned(text: str) -> str:
    found = re.search(r"^Plan: .*$", text, re.MULTILINE)
    assert found, text
    return found.group(0)


# --------------------------------------------------------- the example, a whole node


def test_a_control_plane_node_from_its_csrs_plans_applies_and_plans_no_change(
    deployment: Deployment, mirror: tuple[Path, str], tmp_path: Path
) -> None:
    csrs = tmp_path / "csrs"
    keys = {name: _csr(csrs, name) for name in LEAVES}
    space = _workspace(
        tmp_path,
        mirror,
        EXAMPLE.read_text(),
        client_config=str(deployment.client_config),
        csr_dir=str(csrs),
        node_name=NODE,
        advertise_address=ADDRESS,
    )
    space.init()
    lock = (tmp_path / ".terraform.lock.hcl").read_text()
    assert 'provider "registry.terraform.io/kubeca/kubeca"' in lock

    plan = space.ok("plan", "-input=false", "-out", "first.tfplan")
    assert _planned(plan) == "Plan: 7 to add, 0 to change, 0 to destroy."
    for name in LEAVES:
        assert f'kubeca_certificate.leaf["{name}"] will be created' in plan
    space.ok("apply", "-input=false", "first.tfplan")

    outputs = space.outputs()
    certificates, cas = outputs["certificates"], outputs["ca_certificates"]
    assert isinstance(certificates, dict) and isinstance(cas, dict)
    assert set(certificates) == set(LEAVES)
    with deployment.client() as client:
        served = {ca.authority: ca for ca in client.ca_certificates()}
    assert {name: served[name].certificate_pem for name in served} == cas
    assert outputs["ca_cert_hash"] == served["kubernetes-ca"].ca_cert_hash
    for name, pem in certificates.items():
        certificate = x509.load_pem_x509_certificate(pem.encode())
        assert _spki(certificate) == _spki(keys[name]), name
        certificate.verify_directly_issued_by(
            x509.load_pem_x509_certificate(cas[ISSUER[name]].encode())
        )
    serving = x509.load_pem_x509_certificate(certificates["etcd/server"].encode())
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert NODE in sans.get_values_for_type(x509.DNSName)

    second = space.run("plan", "-input=false", "-detailed-exitcode")
    assert second.returncode == 0, f"the second plan shows a change:\n{second.stdout}"
    state = (tmp_path / "terraform.tfstate").read_text()
    assert "PRIVATE KEY" not in state
    for key in keys.values():
        assert _spki(key).hex() not in state  # nothing of the keys beyond the CSRs' PEM


# ---------------------------------------------------------------------------- renewal

RENEWING = """
resource "kubeca_certificate" "short" {
  profile           = "etcd-healthcheck-client"
  csr_pem           = file("leaf.csr")
  lifetime          = "10m"
  # The whole life is the renewal window, so the certificate is due at once.
  renew_before      = "10m"
  revoke_on_destroy = true
  revocation_reason = "superseded"
}
# The same without revoke_on_destroy, which is off by default.
resource "kubeca_certificate" "kept" {
  profile      = "etcd-healthcheck-client"
  csr_pem      = file("kept.csr")
  lifetime     = "10m"
  renew_before = "10m"
}
output "serial" { value = kubeca_certificate.short.serial }
output "cert_pem" { value = kubeca_certificate.short.cert_pem }
output "kept" { value = kubeca_certificate.kept.serial }
"""


def _crl_reason(client: Client, authority: str, serial: str) -> x509.ReasonFlags | None:
    crl = x509.load_der_x509_crl(client.crl(authority).der)
    entry = crl.get_revoked_certificate_by_serial_number(int(serial, 16))
    if entry is None:
        return None
    return entry.extensions.get_extension_for_class(x509.CRLReason).value.reason


def test_renewal_in_the_plan_and_revocation_on_replacement_and_destroy_when_asked(
    deployment: Deployment, mirror: tuple[Path, str], tmp_path: Path
) -> None:
    key = _csr(tmp_path, "leaf")
    _csr(tmp_path, "kept")
    space = _workspace(tmp_path, mirror, _provider_block(deployment.client_config) + RENEWING)
    space.init()
    space.ok("apply", "-auto-approve", "-input=false")
    first = space.outputs()

    text = space.ok("plan", "-input=false", "-out", "renew.tfplan")
    assert re.search(r"ready_for_renewal +\= true -> false # forces replacement", text), text
    assert "kubeca_certificate.short must be replaced" in text
    assert "kubeca_certificate.kept must be replaced" in text
    assert _planned(text) == "Plan: 2 to add, 0 to change, 2 to destroy."
    space.ok("apply", "-input=false", "renew.tfplan")
    second = space.outputs()
    assert second["serial"] != first["serial"]
    renewed = x509.load_pem_x509_certificate(str(second["cert_pem"]).encode())
    assert _spki(renewed) == _spki(key)  # the same CSR, a new certificate
    with deployment.client() as client:
        # The replaced certificate was revoked as superseded; the new one is valid.
        assert _crl_reason(client, "etcd-ca", first["serial"]) is x509.ReasonFlags.superseded
        assert _crl_reason(client, "etcd-ca", second["serial"]) is None
        assert _crl_reason(client, "etcd-ca", first["kept"]) is None
    assert second["kept"] != first["kept"]

    space.ok("destroy", "-auto-approve", "-input=false")
    assert space.state()["resources"] == []
    with deployment.client() as client:
        assert _crl_reason(client, "etcd-ca", second["serial"]) is x509.ReasonFlags.superseded
        record = next(
            r for r in client.certificates(revoked_only=True) if r.serial == second["serial"]
        )
    assert record.revocation_reason == "superseded"


REFUSED = f"""
resource "kubeca_certificate" "outside" {{
  profile    = "etcd-server"
  csr_pem    = file("leaf.csr")
  parameters = {{
    node_name         = "{NODE}"
    advertise_address = "{ADDRESS}"
    extra_sans        = "evil.example.com"
  }}
}}
"""


def test_a_san_outside_the_grant_is_the_services_refusal_as_an_error(
    deployment: Deployment, mirror: tuple[Path, str], tmp_path: Path
) -> None:
    _csr(tmp_path, "leaf")
    space = _workspace(tmp_path, mirror, _provider_block(deployment.client_config) + REFUSED)
    space.init()
    done = space.run("apply", "-auto-approve", "-input=false")
    assert done.returncode == 1, done.stdout
    assert "Error: kubeca refused to issue etcd-server" in done.stderr, done.stderr
    assert "PERMISSION_DENIED" in done.stderr
    assert "evil.example.com" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "Internal Provider Error" not in done.stderr
    state = json.loads((tmp_path / "terraform.tfstate").read_text())
    assert state["resources"] == []


PLAN_TIME = """
resource "kubeca_certificate" "misspelt" {
  profile = "etcd-serverr"
  csr_pem = file("leaf.csr")
}
resource "kubeca_certificate" "incomplete" {
  profile    = "etcd-server"
  csr_pem    = file("leaf.csr")
  parameters = { node_name = "cp-1", colour = "blue" }
}
"""


def test_an_unknown_profile_and_parameters_are_refused_at_plan_time(
    deployment: Deployment, mirror: tuple[Path, str], tmp_path: Path
) -> None:
    _csr(tmp_path, "leaf")
    space = _workspace(tmp_path, mirror, _provider_block(deployment.client_config) + PLAN_TIME)
    space.init()
    with deployment.client() as client:
        before = len(list(client.certificates()))
    done = space.run("plan", "-input=false")
    assert done.returncode == 1, done.stdout
    errors = " ".join(done.stderr.split())
    assert "the service offers no profile 'etcd-serverr'" in errors, errors
    assert "profile etcd-server does not take parameter 'colour'" in errors
    assert "profile etcd-server needs parameter advertise_address" in errors
    with deployment.client() as client:
        assert len(list(client.certificates())) == before  # a plan issues nothing


OFFLINE = """
resource "kubeca_certificate" "broken" {
  profile    = "etcd-server"
  csr_pem    = "-----BEGIN CERTIFICATE REQUEST-----\\nAAAA\\n-----END CERTIFICATE REQUEST-----\\n"
  parameters = { node_name = "CP_1!", advertise_address = "10.0.0.300" }
  lifetime   = "ten minutes"
}
"""


def test_a_broken_csr_and_malformed_parameters_fail_validate_without_the_service(
    mirror: tuple[Path, str], tmp_path: Path
) -> None:
    # No server at all: the provider block names a config that does not exist, and
    # validate never configures the provider.
    space = _workspace(tmp_path, mirror, _provider_block(tmp_path / "absent.toml") + OFFLINE)
    space.init()
    done = space.run("validate")
    assert done.returncode == 1, done.stdout
    errors = " ".join(done.stderr.split())
    assert "csr_pem is not a PEM certificate request" in errors, errors
    assert "parameter node_name: 'CP_1!' is not a valid DNS-1123 subdomain" in errors
    assert "parameter advertise_address: '10.0.0.300' is not an IP address" in errors
    assert "lifetime: 'ten minutes' is not a duration" in errors
    assert "Traceback" not in done.stderr


# ---------------------------------------------------- ephemeral, and dev_overrides

EPHEMERAL = """
ephemeral "kubeca_certificate" "node" {
  profile    = "kubelet-client"
  csr_pem    = file("leaf.csr")
  parameters = { node_name = "cp-1" }
}
# An ephemeral value may go only where nothing is stored; a check block's assertion is
# one such place, and makes the plan fail unless the certificate came back.
check "issued" {
  assert {
    condition     = startswith(ephemeral.kubeca_certificate.node.cert_pem, "-----BEGIN")
    error_message = "no certificate"
  }
}
"""


def test_an_ephemeral_certificate_is_issued_and_never_enters_plan_or_state(
    deployment: Deployment, mirror: tuple[Path, str], tmp_path: Path
) -> None:
    _csr(tmp_path, "leaf")
    space = _workspace(tmp_path, mirror, _provider_block(deployment.client_config) + EPHEMERAL)
    space.init()
    text = space.ok("plan", "-input=false", "-out", "e.tfplan")
    assert "ephemeral.kubeca_certificate.node: Opening..." in text
    assert "Warning" not in text
    space.ok("apply", "-input=false", "e.tfplan")
    state = (tmp_path / "terraform.tfstate").read_text()
    # The plan file is a zip of the plan, the config and the state; the CSR is in the
    # config, so look for a certificate only.
    with zipfile.ZipFile(tmp_path / "e.tfplan") as plan_file:
        stored = [plan_file.read(name) for name in plan_file.namelist()]
    for blob in (state.encode(), *stored):
        assert b"BEGIN CERTIFICATE-----" not in blob
    with deployment.client() as client:
        kubelets = list(client.certificates(profile="kubelet-client"))
    assert [r.subject for r in kubelets] and all("system:node:cp-1" in r.subject for r in kubelets)


DATA_ONLY = """
data "kubeca_ca_certificates" "etcd" { authority = "etcd-ca" }
output "hashes" { value = data.kubeca_ca_certificates.etcd.ca_cert_hash }
"""


def test_dev_overrides_runs_the_provider_without_init(
    deployment: Deployment, tmp_path: Path
) -> None:
    plugins = tmp_path / "plugins"
    done = subprocess.run(
        [str(BIN / "kubeca"), "terraform-provider", "dev-override", "--dir", str(plugins)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r'dev_overrides \{\s+"kubeca/kubeca" = ', done.stdout), done.stdout
    (tmp_path / "main.tf").write_text(_provider_block(deployment.client_config) + DATA_ONLY)
    space = Workspace(tmp_path, done.stdout, {})
    applied = space.run("apply", "-auto-approve", "-input=false")
    assert applied.returncode == 0, applied.stderr
    assert "Provider development overrides are in effect" in applied.stderr + applied.stdout
    with deployment.client() as client:
        etcd = client.ca_certificates("etcd-ca")[0]
    assert space.outputs() == {"hashes": {"etcd-ca": etcd.ca_cert_hash}}
