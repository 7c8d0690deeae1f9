"""Kubeconfig files with embedded certificate data: written as kubeadm writes them,
read whether kubeadm (YAML) or anyone else (YAML or JSON) wrote them.

Reading needs only a handful of scalar fields, each on its own line in both formats,
so a line scanner does it without a YAML dependency in the thin client.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from pathlib import Path

from kubeca_client.errors import InvalidArgument

CLUSTER_NAME = "kubernetes"
_FIELD = re.compile(r'^\s*(?:-\s+)?"?([a-z-]+)"?\s*:\s*"?([^"\s,]*)"?,?\s*$')
_FIELDS = {
    "server",
    "certificate-authority-data",
    "client-certificate-data",
    "client-key-data",
    "current-context",
}


@dataclass(frozen=True)
class Kubeconfig:
    server: str
    user: str
    ca_pem: bytes
    cert_pem: bytes | None
    key_pem: bytes | None

    def render(self) -> bytes:
        """The kubeconfig kubeadm writes: one cluster, one user, one context."""
        context = f"{self.user}@{CLUSTER_NAME}"
        user_fields = []
        if self.cert_pem is not None:
            user_fields.append(f"    client-certificate-data: {_b64(self.cert_pem)}")
        if self.key_pem is not None:
            user_fields.append(f"    client-key-data: {_b64(self.key_pem)}")
        lines = [
            "apiVersion: v1",
            "clusters:",
            "- cluster:",
            f"    certificate-authority-data: {_b64(self.ca_pem)}",
            f"    server: {json.dumps(self.server)}",
            f"  name: {CLUSTER_NAME}",
            "contexts:",
            "- context:",
            f"    cluster: {CLUSTER_NAME}",
            f"    user: {json.dumps(self.user)}",
            f"  name: {json.dumps(context)}",
            f"current-context: {json.dumps(context)}",
            "kind: Config",
            "preferences: {}",
            "users:",
            f"- name: {json.dumps(self.user)}",
            "  user:",
            *user_fields,
        ]
        return ("\n".join(lines) + "\n").encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def read_kubeconfig(path: Path) -> dict[str, str]:
    """The scalar fields kubeca needs, as they appear in the file (data still base64)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read kubeconfig {path}: {exc}") from None
    found: dict[str, str] = {}
    for line in text.splitlines():
        match = _FIELD.match(line)
        if match and match.group(1) in _FIELDS and match.group(1) not in found:
            found[match.group(1)] = match.group(2)
    return found


def decode_field(fields: dict[str, str], name: str, path: Path) -> bytes | None:
    value = fields.get(name)
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{path}: {name} is not valid base64") from None


def user_of(fields: dict[str, str]) -> str:
    """The user name from current-context, which kubeadm names '<user>@<cluster>'."""
    context = fields.get("current-context", "")
    return context.rpartition("@")[0] or context
