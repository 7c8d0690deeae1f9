"""The service-account files of a control-plane layout, now that kubeca holds the key.

kube-apiserver signs tokens through ExternalJWTSigner (``kubeca signer-proxy`` on the
node, or the server's own socket), so the layout holds no sa.key. It holds:

- ``pki/sa.pub``: every published verification key, PEM, for anything that reads the
  file (kube-apiserver itself takes its keys from FetchKeys);
- ``kubeca-patches/kube-apiserver0+json.json``: a kubeadm patch (``kubeadm init
  --patches DIR``) removing ``--service-account-key-file`` and
  ``--service-account-signing-key-file`` (both exclusive with the endpoint) and adding
  ``--service-account-signing-endpoint`` with the socket's directory mounted.

JSON Patch addresses list items by index, and kubeadm writes kube-apiserver's flags
sorted by name, so the indexes are those of a stock ``kubeadm init``; every removal is
guarded by a ``test`` of the exact flag at that index, so a kubeadm that writes other
flags refuses the patch with an error rather than dropping the wrong one.

``--local-sa-key`` keeps the old way (sa.key made here, on disk) for clusters older
than 1.32, which have no external signer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kubeca_client.client import ServiceAccountKey
from kubeca_client.errors import InvalidArgument
from kubeca_client.files import PRIVATE, PUBLIC
from kubeca_client.keys import private_key_pem
from kubeca_client.slots import Write

DEFAULT_ENDPOINT = Path("/run/kubeca/signer.sock")
PATCH_DIR = "kubeca-patches"
APISERVER_PATCH = "kube-apiserver0+json.json"
LOCAL_KEY_WARNING = (
    "warning: --local-sa-key writes sa.key to disk: whoever reads it can mint a token for "
    "any service account until the key is changed; use it only for clusters older than "
    "1.32, which cannot use kubeca's signer"
)
CONTROLLER_MANAGER_NOTE = (
    "kube-controller-manager: remove --service-account-private-key-file from "
    "manifests/kube-controller-manager.yaml (kubeadm writes it; there is no sa.key). The "
    "legacy Secret-token controller is then off; --use-service-account-credentials "
    "tokens come through TokenRequest, i.e. through the signer."
)
# kube-apiserver's flags as a stock `kubeadm init` writes them: getAPIServerCommand's
# defaults (with local etcd and authorization-mode), which ArgumentsToCommand sorts by
# name; index 0 is the binary. apiServer.extraArgs that sort before
# "service-account-key-file" shift the indexes, and the patch's tests then fail loudly.
STOCK_APISERVER_FLAGS = (
    "advertise-address",
    "allow-privileged",
    "authorization-mode",
    "client-ca-file",
    "enable-admission-plugins",
    "enable-bootstrap-token-auth",
    "etcd-cafile",
    "etcd-certfile",
    "etcd-keyfile",
    "etcd-servers",
    "kubelet-client-certificate",
    "kubelet-client-key",
    "kubelet-preferred-address-types",
    "proxy-client-cert-file",
    "proxy-client-key-file",
    "requestheader-allowed-names",
    "requestheader-client-ca-file",
    "requestheader-extra-headers-prefix",
    "requestheader-group-headers",
    "requestheader-username-headers",
    "secure-port",
    "service-account-issuer",
    "service-account-key-file",
    "service-account-signing-key-file",
    "service-cluster-ip-range",
    "tls-cert-file",
    "tls-private-key-file",
)
_COMMAND = "/spec/containers/0/command"


def published_keys_pem(keys: list[ServiceAccountKey]) -> bytes:
    """sa.pub: the published keys as PUBLIC KEY PEM blocks, current first."""
    if not keys:
        raise InvalidArgument("the service published no service-account keys")
    out = b""
    for key in keys:
        public = serialization.load_der_public_key(key.public_der)
        out += public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return out


def apiserver_patch(pki_dir: Path, endpoint: Path) -> list[dict[str, Any]]:
    """The JSON patch for kube-apiserver's static pod (see the module docstring)."""
    ops: list[dict[str, Any]] = []
    # Removed from the end first, so the earlier index stays valid.
    for flag, file in (
        ("service-account-signing-key-file", "sa.key"),
        ("service-account-key-file", "sa.pub"),
    ):
        index = 1 + STOCK_APISERVER_FLAGS.index(flag)
        path = f"{_COMMAND}/{index}"
        ops.append({"op": "test", "path": path, "value": f"--{flag}={pki_dir / file}"})
        ops.append({"op": "remove", "path": path})
    ops.append(
        {
            "op": "add",
            "path": f"{_COMMAND}/-",
            "value": f"--service-account-signing-endpoint={endpoint}",
        }
    )
    ops.append(
        {
            "op": "add",
            "path": "/spec/volumes/-",
            "value": {
                "name": "kubeca-signer",
                "hostPath": {"path": str(endpoint.parent), "type": "Directory"},
            },
        }
    )
    ops.append(
        {
            "op": "add",
            "path": "/spec/containers/0/volumeMounts/-",
            "value": {"name": "kubeca-signer", "mountPath": str(endpoint.parent)},
        }
    )
    return ops


def signer_writes(root: Path, keys: list[ServiceAccountKey], endpoint: Path) -> list[Write]:
    """sa.pub and the kube-apiserver patch, rewritten whenever they differ."""
    patch = json.dumps(apiserver_patch(root / "pki", endpoint), indent=2).encode() + b"\n"
    wanted = [
        Write(root / "pki" / "sa.pub", published_keys_pem(keys), PUBLIC),
        Write(root / PATCH_DIR / APISERVER_PATCH, patch, PUBLIC),
    ]
    return [w for w in wanted if not w.path.exists() or w.path.read_bytes() != w.data]


def local_key_writes(root: Path) -> list[Write]:
    """sa.key/sa.pub as kubeadm makes them, kept when present (--local-sa-key only)."""
    key_path, pub_path = root / "pki" / "sa.key", root / "pki" / "sa.pub"
    writes: list[Write] = []
    if key_path.exists():
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            key = None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise InvalidArgument(f"{key_path} is not an unencrypted RSA private key")
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        writes.append(Write(key_path, private_key_pem(key), PRIVATE))
    if not pub_path.exists() or writes:
        pub = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        writes.append(Write(pub_path, pub, PUBLIC))
    return writes
