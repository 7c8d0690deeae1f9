"""`kubeca terraform` run exactly as Terraform's `external` data source runs it.

The harness (tests/terraform_harness.py) resolves `kubeca` on PATH, passes the whole
environment, writes the query map as json.Marshal does, and decodes stdout as strictly as
the provider (stricter: no byte besides the one JSON object). Every read here goes to the
session's real server.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support import RunningServer, free_port, run_server_cli
from tests.terraform_harness import (
    assert_failed,
    external_provider_mirror,
    go_marshal_query,
    provider_mirror,
    read,
    run_program,
    terraform_env,
)

pytestmark = pytest.mark.integration

RESULT_KEYS = {
    "certificate_pem",
    "ca_pem",
    "serial",
    "not_before",
    "not_after",
    "fingerprint_sha256",
    "authority",
    "reused",
}


class Csr:
    """A fresh leaf key and its CSR (empty subject: the profile decides)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.pem = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(self.key, hashes.SHA256())
            .public_bytes(Encoding.PEM)
            .decode()
        )

    @property
    def spki(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    @property
    def key_pem(self) -> str:
        return self.key.private_bytes(
            Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()


def _spki_hash(pem: bytes) -> str:
    spki = (
        x509.load_pem_x509_certificate(pem)
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


@pytest.fixture(scope="module")
def client_config(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(server.client_config(tmp_path_factory.mktemp("tf") / "client.toml", timeout=20))


@pytest.fixture(scope="module")
def pin(server: RunningServer) -> str:
    return _spki_hash(server.service_ca.read_bytes())


def _explicit(server: RunningServer) -> dict[str, str]:
    """The connection as separate query keys, trusting the service CA by file."""
    return {
        "server": server.address,
        "ca_file": str(server.service_ca),
        "cert_file": str(server.credentials_dir / "client.crt"),
        "key_file": str(server.credentials_dir / "client.key"),
    }


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A port that accepts TCP connections into its backlog and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener


def _address(listener: socket.socket) -> str:
    host, port = listener.getsockname()
    return f"{host}:{port}"


def _was_contacted(listener: socket.socket) -> bool:
    listener.setblocking(False)
    try:
        connection, _ = listener.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


def _assert_issued_for(result: dict[str, str], csr: Csr, authority: str) -> x509.Certificate:
    """The result is public material only and certifies exactly the CSR's key."""
    assert set(result) == RESULT_KEYS
    for key, value in result.items():
        assert "PRIVATE KEY" not in value, f"{key} holds a private key"
    certificate = x509.load_pem_x509_certificate(result["certificate_pem"].encode())
    ca = x509.load_pem_x509_certificate(result["ca_pem"].encode())
    assert (
        certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        == csr.spki
    )
    certificate.verify_directly_issued_by(ca)
    assert result["authority"] == authority
    assert result["serial"] == format(certificate.serial_number, "x")
    assert result["fingerprint_sha256"] == certificate.fingerprint(hashes.SHA256()).hex()
    assert datetime.fromisoformat(result["not_before"]) == certificate.not_valid_before_utc
    assert datetime.fromisoformat(result["not_after"]) == certificate.not_valid_after_utc
    assert result["reused"] in ("true", "false")
    return certificate


def _sans(certificate: x509.Certificate) -> set[str]:
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {
        *names.get_values_for_type(x509.DNSName),
        *map(str, names.get_values_for_type(x509.IPAddress)),
    }


# --- success -------------------------------------------------------------------------


def test_admin_read_through_a_client_config_certifies_the_csr(client_config: str) -> None:
    csr = Csr()
    result = read({"profile": "admin", "csr_pem": csr.pem, "client_config": client_config})
    certificate = _assert_issued_for(result, csr, "kubernetes-ca")
    assert result["reused"] == "false"
    assert certificate.subject.rfc4514_string() == "CN=kubernetes-admin,O=kubeadm:cluster-admins"


def test_etcd_server_read_with_explicit_keys_and_jsonencoded_parameters(
    server: RunningServer,
) -> None:
    csr = Csr()
    parameters = {"node_name": "etcd-1", "advertise_address": "10.0.0.11"}
    query = {"profile": "etcd-server", "csr_pem": csr.pem, "parameters": json.dumps(parameters)}
    certificate = _assert_issued_for(read({**query, **_explicit(server)}), csr, "etcd-ca")
    assert {"etcd-1", "localhost", "10.0.0.11", "127.0.0.1"} <= _sans(certificate)


def test_apiserver_read_pinned_by_ca_cert_hash_with_flat_parameters(
    server: RunningServer, pin: str
) -> None:
    csr = Csr()
    query = {
        **_explicit(server),
        "ca_file": None,  # a null in HCL: the provider leaves the key out
        "ca_cert_hash": pin,
        "profile": "apiserver",
        "csr_pem": csr.pem,
        "param_node_name": "cp-1",
        "param_advertise_address": "10.0.0.21",
        "timeout_seconds": "15",
    }
    certificate = _assert_issued_for(read(query), csr, "kubernetes-ca")
    assert {"cp-1", "kubernetes.default.svc.cluster.local", "10.0.0.21", "10.96.0.1"} <= _sans(
        certificate
    )


def test_empty_strings_for_optional_keys_read_as_unset(client_config: str) -> None:
    """A module passes unset optional variables as "", which Terraform sends as ""."""
    csr = Csr()
    query = {"profile": "admin", "csr_pem": csr.pem, "client_config": client_config}
    optional = {"server": "", "parameters": "", "lifetime": "", "timeout_seconds": ""}
    _assert_issued_for(read({**query, **optional}), csr, "kubernetes-ca")


def test_repeat_reads_return_the_same_certificate(client_config: str) -> None:
    csr = Csr()
    query = {"profile": "admin", "csr_pem": csr.pem, "client_config": client_config}
    results = [read(query) for _ in range(5)]
    for result in results:
        _assert_issued_for(result, csr, "kubernetes-ca")
    assert [r["reused"] for r in results] == ["false", "true", "true", "true", "true"]
    for key in ("serial", "fingerprint_sha256", "certificate_pem", "not_after"):
        assert len({r[key] for r in results}) == 1, key


def test_a_different_csr_gets_a_different_certificate(client_config: str) -> None:
    first, second = Csr(), Csr()
    query = {"profile": "admin", "client_config": client_config}
    one = read({**query, "csr_pem": first.pem})
    other = read({**query, "csr_pem": second.pem})
    _assert_issued_for(other, second, "kubernetes-ca")
    assert other["reused"] == "false"
    assert other["serial"] != one["serial"]
    assert other["fingerprint_sha256"] != one["fingerprint_sha256"]


# --- refusals before any network call --------------------------------------------------

STDIN_NOT_A_QUERY = [
    pytest.param(b"", "profile is required", id="empty-stdin-is-an-empty-query"),
    pytest.param(b"{}", "profile is required", id="empty-object"),
    pytest.param(b"profile=admin", "stdin is not a JSON object", id="not-json"),
    pytest.param(b'{"profile": "admin"', "stdin is not a JSON object", id="truncated-json"),
    pytest.param(b'{"profile": "admin"} x', "stdin is not a JSON object", id="trailing-text"),
    pytest.param(b'["admin"]', "JSON object of string values", id="array"),
    pytest.param(b'"admin"', "JSON object of string values", id="string"),
    pytest.param(b'{"profile": "admin", "lifetime": 3600}', "string values", id="number"),
    pytest.param(b'{"profile": "admin", "lifetime": true}', "string values", id="bool"),
    pytest.param(b'{"profile": null}', "string values", id="null"),
    pytest.param(b'{"parameters": {"node_name": "a"}}', "string values", id="nested-object"),
    pytest.param(b'{"profile": ["admin"]}', "string values", id="nested-array"),
    pytest.param(b'{"query": {"profile": "admin"}}', "string values", id="wrapped-in-query-object"),
    pytest.param(
        b'{"csr_pem": "' + b"A" * (1024 * 1024) + b'"}', "larger than 1 MiB", id="over-1MiB"
    ),
]


@pytest.mark.parametrize(("stdin", "fragment"), STDIN_NOT_A_QUERY)
def test_stdin_that_is_not_a_query_of_strings_is_refused(stdin: bytes, fragment: str) -> None:
    assert_failed(run_program(stdin), fragment, exit_code=2)


BAD_QUERIES = [
    pytest.param({"servr": "x"}, "unknown query key 'servr'", id="unknown-key"),
    pytest.param({"profile": ""}, "profile is required", id="missing-profile"),
    pytest.param({"csr_pem": None}, "csr_pem must be a PEM certificate request", id="no-csr"),
    pytest.param({"parameters": "{node_name = cp-1}"}, "jsonencode()d", id="parameters-not-json"),
    pytest.param(
        {"parameters": '{"node_name": 1}'}, "JSON object of string values", id="parameters-number"
    ),
    pytest.param({"parameters": '["cp-1"]'}, "JSON object of string", id="parameters-array"),
    pytest.param(
        {"parameters": '{"node_name": "cp-1"}', "param_node_name": "cp-1"},
        "parameter node_name is given twice",
        id="parameter-given-both-ways",
    ),
    pytest.param({"lifetime": "24h"}, "whole number of seconds", id="lifetime-not-seconds"),
    *(
        pytest.param({"timeout_seconds": value}, "timeout_seconds must be", id=f"timeout-{value}")
        for value in ("0", "-1", "301", "abc", "nan", "inf")
    ),
    pytest.param({"server": None}, "server must be HOST:PORT", id="no-server"),
    pytest.param({"ca_file": None}, "exactly one of ca_file and ca_cert_hash", id="no-trust"),
    pytest.param(
        {"ca_cert_hash": "sha256:" + "0" * 64},
        "exactly one of ca_file and ca_cert_hash",
        id="ca-file-and-ca-cert-hash",
    ),
    pytest.param(
        {"ca_file": None, "ca_cert_hash": "sha256:xyz"},
        "sha256:<64 hex digits>",
        id="malformed-ca-cert-hash",
    ),
    pytest.param({"cert_file": None}, "cert_file and key_file", id="no-cert-file"),
    pytest.param({"key_file": None}, "cert_file and key_file", id="no-key-file"),
]


@pytest.mark.parametrize(("change", "fragment"), BAD_QUERIES)
def test_a_bad_query_is_refused_with_one_line(
    server: RunningServer, change: dict[str, str | None], fragment: str
) -> None:
    query: dict[str, str | None] = {
        **_explicit(server),
        "profile": "admin",
        "csr_pem": Csr().pem,
        **change,
    }
    assert_failed(run_program(go_marshal_query(query)), fragment, exit_code=2)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        pytest.param({"cert_file": "/nonexistent/client.crt"}, "cert_file: cannot read", id="cert"),
        pytest.param({"ca_file": "/nonexistent/ca.crt"}, "ca_file: cannot read", id="ca"),
        pytest.param(
            {"client_config": "/nonexistent/client.toml"}, "cannot read client config", id="config"
        ),
    ],
)
def test_unreadable_files_are_a_config_error(
    server: RunningServer, change: dict[str, str], fragment: str
) -> None:
    # A client_config stands alone: the explicit trust keys may not come with it.
    base = {} if "client_config" in change else _explicit(server)
    query = {**base, "profile": "admin", "csr_pem": Csr().pem, **change}
    assert_failed(run_program(go_marshal_query(query)), fragment, exit_code=78)


def test_a_private_key_in_csr_pem_is_refused_without_contacting_the_server(
    server: RunningServer, silent_listener: socket.socket
) -> None:
    csr = Csr()
    query = {
        **_explicit(server),
        "server": _address(silent_listener),
        "profile": "admin",
        "csr_pem": csr.key_pem + csr.pem,
    }
    outcome = run_program(go_marshal_query(query))
    line = assert_failed(outcome, "csr_pem holds a private key", exit_code=2)
    assert "PRIVATE KEY" not in line and csr.key_pem.splitlines()[1] not in outcome.stderr
    assert not _was_contacted(silent_listener)


# --- refusals by the server ------------------------------------------------------------


def _refused(query: Mapping[str, str | None], *fragments: str, exit_code: int) -> str:
    return assert_failed(run_program(go_marshal_query(query)), *fragments, exit_code=exit_code)


def test_an_unknown_profile_is_not_found(client_config: str) -> None:
    query = {"profile": "kube-everything", "csr_pem": Csr().pem, "client_config": client_config}
    _refused(query, "no profile named 'kube-everything'", exit_code=3)


def test_a_garbage_csr_is_an_invalid_argument(client_config: str) -> None:
    garbage = (
        "-----BEGIN CERTIFICATE REQUEST-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE REQUEST-----\n"
    )
    query = {"profile": "admin", "csr_pem": garbage, "client_config": client_config}
    _refused(query, "csr", exit_code=2)


def test_a_wrong_ca_cert_hash_names_both_hashes(server: RunningServer, pin: str) -> None:
    wrong = "sha256:" + "ab" * 32
    query = {
        **_explicit(server),
        "ca_file": None,
        "ca_cert_hash": wrong,
        "profile": "admin",
        "csr_pem": Csr().pem,
    }
    _refused(query, wrong, pin, exit_code=4)


def test_a_pin_given_with_a_client_config_is_not_silently_ignored(
    client_config: str,
) -> None:
    """client_config plus ca_cert_hash: either refuse the mix or check the pin, never
    drop a trust setting the module asked for."""
    query = {
        "client_config": client_config,
        "ca_cert_hash": "sha256:" + "ab" * 32,
        "profile": "admin",
        "csr_pem": Csr().pem,
    }
    outcome = run_program(go_marshal_query(query))
    assert outcome.returncode != 0, "the wrong pin was ignored:\n" + outcome.describe()
    assert_failed(outcome)


@pytest.fixture(scope="module")
def no_grant_config(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Operator credentials from the same service CA for an identity with no grant."""
    directory = tmp_path_factory.mktemp("no-grant")
    run_server_cli(
        server.config, server.token, "credentials", "issue", "--name", "no-grant",
        "--out", str(directory / "credentials"),
    )  # fmt: skip
    path = directory / "client.toml"
    path.write_text(
        f'address = "{server.address}"\ntimeout_seconds = 20\n'
        f'ca_file = "{server.service_ca}"\n'
        f'cert_file = "{directory / "credentials" / "client.crt"}"\n'
        f'key_file = "{directory / "credentials" / "client.key"}"\n'
    )
    return str(path)


def test_an_operator_without_a_grant_is_denied(no_grant_config: str) -> None:
    query = {"profile": "admin", "csr_pem": Csr().pem, "client_config": no_grant_config}
    _refused(query, "no-grant", "grant", exit_code=4)


def test_a_profile_the_server_disables_is_denied(client_config: str) -> None:
    query = {"profile": "super-admin", "csr_pem": Csr().pem, "client_config": client_config}
    _refused(query, "super-admin", exit_code=4)


def test_a_refused_port_fails_fast_as_unavailable(server: RunningServer) -> None:
    query = {
        **_explicit(server),
        "server": f"127.0.0.1:{free_port()}",
        "timeout_seconds": "2",
        "profile": "admin",
        "csr_pem": Csr().pem,
    }
    outcome = run_program(go_marshal_query(query))
    assert_failed(outcome, exit_code=69)
    assert outcome.seconds < 10


@pytest.mark.parametrize("trust", ["client_config", "ca_cert_hash"])
def test_a_silent_server_is_bounded_by_timeout_seconds(
    server: RunningServer,
    client_config: str,
    pin: str,
    silent_listener: socket.socket,
    trust: str,
) -> None:
    connection: dict[str, str | None] = (
        {"client_config": client_config}
        if trust == "client_config"
        else {**_explicit(server), "ca_file": None, "ca_cert_hash": pin}
    )
    query = {
        **connection,
        "server": _address(silent_listener),
        "timeout_seconds": "2",
        "profile": "admin",
        "csr_pem": Csr().pem,
    }
    outcome = run_program(go_marshal_query(query), timeout=30)
    assert_failed(outcome, _address(silent_listener), exit_code=69)
    assert outcome.seconds < 10, outcome.describe()


# --- the real thing, when this machine has it ---------------------------------------------

MODULE = """\
terraform {
  required_providers {
    external = { source = "hashicorp/external" }
  }
}

variable "csr_pem" { type = string }
variable "client_config" { type = string }

data "external" "admin" {
  program = ["kubeca", "terraform"]
  query = {
    profile       = "admin"
    csr_pem       = var.csr_pem
    client_config = var.client_config
    lifetime      = null
  }
}

output "certificate_pem" { value = data.external.admin.result.certificate_pem }
output "serial" { value = data.external.admin.result.serial }
"""


def test_terraform_reads_the_data_source_and_plans_no_change(
    client_config: str, tmp_path: Path
) -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip(
            "terraform is not installed on this machine "
            "(not in Debian's or PyPI's registries reachable here)"
        )
    mirror = external_provider_mirror()
    if mirror is None:
        pytest.skip(
            f"{terraform} is installed, but the hashicorp/external provider is not in any "
            "local plugin mirror and registry.terraform.io is not reachable here"
        )
    csr = Csr()
    (tmp_path / "main.tf").write_text(MODULE)
    cli_config = tmp_path / "terraformrc"
    cli_config.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path = "{mirror}"\n'
        '    include = ["registry.terraform.io/hashicorp/*"]\n  }\n}\n'
    )
    env = terraform_env(
        {
            "TF_CLI_CONFIG_FILE": str(cli_config),
            "TF_DATA_DIR": str(tmp_path / ".terraform"),
            "TF_IN_AUTOMATION": "1",
            "CHECKPOINT_DISABLE": "1",
            "TF_VAR_csr_pem": csr.pem,
            "TF_VAR_client_config": client_config,
        }
    )
    env.pop("TF_PLUGIN_CACHE_DIR", None)

    def terraform_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [terraform, *args, "-no-color"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    for step in (("init", "-input=false"), ("apply", "-auto-approve", "-input=false")):
        done = terraform_run(*step)
        assert done.returncode == 0, f"terraform {step[0]}:\n{done.stdout}\n{done.stderr}"
    outputs = json.loads(terraform_run("output", "-json").stdout)
    certificate = x509.load_pem_x509_certificate(outputs["certificate_pem"]["value"].encode())
    assert (
        certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        == csr.spki
    )
    assert outputs["serial"]["value"] == format(certificate.serial_number, "x")
    plan = terraform_run("plan", "-detailed-exitcode", "-input=false")
    assert plan.returncode == 0, f"a second plan shows a change:\n{plan.stdout}\n{plan.stderr}"
    state = (tmp_path / "terraform.tfstate").read_text()
    assert "PRIVATE KEY" not in state


DEPLOY_MODULE = Path(__file__).resolve().parents[2] / "deploy" / "terraform" / "main.tf"
DEPLOY_PROVIDERS = ("external", "tls", "local")


def test_the_deploy_example_module_applies_and_plans_no_change(
    server: RunningServer, tmp_path: Path
) -> None:
    """deploy/terraform/main.tf as shipped: seven control-plane certificates through
    `kubeca terraform`, run by hashicorp/external under the real terraform binary."""
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not installed on this machine")
    mirror = provider_mirror(*DEPLOY_PROVIDERS)
    if mirror is None:
        pytest.skip(
            "deploy/terraform needs hashicorp/external, tls and local, and no local plugin "
            "mirror holds all three (registry.terraform.io is not reachable here); "
            "test_terraform_provider.py runs deploy/terraform/provider instead"
        )
    shutil.copy(DEPLOY_MODULE, tmp_path / "main.tf")
    cli_config = tmp_path / "terraformrc"
    cli_config.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path = "{mirror}"\n'
        '    include = ["registry.terraform.io/hashicorp/*"]\n  }\n}\n'
    )
    env = terraform_env(
        {
            "HOME": str(tmp_path),
            "TF_CLI_CONFIG_FILE": str(cli_config),
            "TF_DATA_DIR": str(tmp_path / ".terraform"),
            "TF_IN_AUTOMATION": "1",
            "CHECKPOINT_DISABLE": "1",
            "TF_VAR_kubeca_server": server.address,
            "TF_VAR_kubeca_ca_file": str(server.service_ca),
            "TF_VAR_kubeca_cert_file": str(server.credentials_dir / "client.crt"),
            "TF_VAR_kubeca_key_file": str(server.credentials_dir / "client.key"),
            "TF_VAR_node_name": "cp-1",
            "TF_VAR_advertise_address": "10.0.0.10",
        }
    )
    env.pop("TF_PLUGIN_CACHE_DIR", None)

    def terraform_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [terraform, *args, "-no-color"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    for step in (("init", "-input=false"), ("apply", "-auto-approve", "-input=false")):
        done = terraform_run(*step)
        assert done.returncode == 0, f"terraform {step[0]}:\n{done.stdout}\n{done.stderr}"
    outputs = json.loads(terraform_run("output", "-json").stdout)
    certificates = outputs["certificates"]["value"]
    assert len(certificates) == 7
    for name, result in certificates.items():
        certificate = x509.load_pem_x509_certificate(result["certificate_pem"].encode())
        ca = x509.load_pem_x509_certificate(result["ca_pem"].encode())
        certificate.verify_directly_issued_by(ca)
        assert result["serial"] == format(certificate.serial_number, "x"), name
    plan = terraform_run("plan", "-detailed-exitcode", "-input=false")
    assert plan.returncode == 0, f"a second plan shows a change:\n{plan.stdout}\n{plan.stderr}"
