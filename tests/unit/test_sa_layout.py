"""The kube-apiserver patch, applied (RFC 6902, as kubeadm applies it) to the static pod
a stock `kubeadm init` writes: the two key-file flags go, the endpoint flag and its
socket mount come, and a command that differs makes the patch fail instead."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from kubeca_client.sa_layout import STOCK_APISERVER_FLAGS, apiserver_patch

PKI = Path("/etc/kubernetes/pki")
ENDPOINT = Path("/run/kubeca/signer.sock")


class PatchFailed(Exception):
    pass


def _parent(document: Any, path: str) -> tuple[Any, str]:
    parts = path.lstrip("/").split("/")
    node = document
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, parts[-1]


def apply(document: Any, ops: list[dict[str, Any]]) -> Any:
    result = copy.deepcopy(document)
    for op in ops:
        parent, last = _parent(result, op["path"])
        if op["op"] == "test":
            if parent[int(last)] != op["value"]:
                raise PatchFailed(op["path"])
        elif op["op"] == "remove":
            del parent[int(last)]
        elif op["op"] == "add":
            assert last == "-"
            parent.append(op["value"])
    return result


def stock_pod(extra_flags: tuple[str, ...] = ()) -> dict[str, Any]:
    values = {
        "service-account-key-file": PKI / "sa.pub",
        "service-account-signing-key-file": PKI / "sa.key",
    }
    flags = sorted((*STOCK_APISERVER_FLAGS, *extra_flags))
    command = ["kube-apiserver", *(f"--{f}={values.get(f, 'x')}" for f in flags)]
    return {
        "spec": {
            "containers": [{"command": command, "volumeMounts": [{"name": "k8s-certs"}]}],
            "volumes": [{"name": "k8s-certs"}],
        }
    }


def test_the_patch_swaps_the_key_files_for_the_endpoint_and_mounts_the_socket() -> None:
    pod = apply(stock_pod(), apiserver_patch(PKI, ENDPOINT))
    container = pod["spec"]["containers"][0]
    command = container["command"]
    assert not [
        c
        for c in command
        if c.startswith(("--service-account-key-file", "--service-account-signing-key-file"))
    ]
    assert command[-1] == f"--service-account-signing-endpoint={ENDPOINT}"
    assert len(command) == 1 + len(STOCK_APISERVER_FLAGS) - 2 + 1
    assert "--service-account-issuer=x" in command  # still required, untouched
    assert {"name": "kubeca-signer", "mountPath": "/run/kubeca"} in container["volumeMounts"]
    assert {
        "name": "kubeca-signer",
        "hostPath": {"path": "/run/kubeca", "type": "Directory"},
    } in pod["spec"]["volumes"]


def test_a_command_with_other_flags_first_fails_the_patch_instead_of_removing_them() -> None:
    with pytest.raises(PatchFailed):
        apply(stock_pod(extra_flags=("audit-log-path",)), apiserver_patch(PKI, ENDPOINT))
