"""kubeadm's /etc/kubernetes layout: which file holds which certificate, from which CA.

The names are kubeadm's own (certlist.go, kubeconfig.go, `certs check-expiration`),
so a directory kubeca writes is one kubeadm accepts in External CA mode: each CA's
.crt present and its .key absent, every leaf that CA signs present and valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kubeca_client.authorities import ETCD_CA, FRONT_PROXY_CA, KUBERNETES_CA


@dataclass(frozen=True)
class CAFile:
    authority: str
    base: str  # under pki/, without .crt/.key
    name: str  # as `kubeadm certs check-expiration` names it


CA_FILES = (
    CAFile(KUBERNETES_CA, "ca", "ca"),
    CAFile(ETCD_CA, "etcd/ca", "etcd-ca"),
    CAFile(FRONT_PROXY_CA, "front-proxy-ca", "front-proxy-ca"),
)
CA_BY_AUTHORITY = {ca.authority: ca for ca in CA_FILES}


@dataclass(frozen=True)
class LeafFile:
    """A certificate and key pair under pki/."""

    name: str  # kubeadm's name for it
    base: str  # under pki/
    profile: str
    authority: str  # the CA file kubeadm verifies it with (offline, in check-expiration)
    # Which of kubeadm's extra-SAN flags feeds it: "apiserver" (--apiserver-cert-extra-sans)
    # or "etcd" (etcd's serverCertSANs/peerCertSANs), if either.
    extra_sans: str = ""

    def cert_path(self, root: Path) -> Path:
        return root / "pki" / f"{self.base}.crt"

    def key_path(self, root: Path) -> Path:
        return root / "pki" / f"{self.base}.key"

    def csr_path(self, root: Path) -> Path:
        return root / "pki" / f"{self.base}.csr"


@dataclass(frozen=True)
class KubeconfigFile:
    """A kubeconfig with its client certificate and key embedded."""

    name: str  # file name under the root, e.g. admin.conf
    profile: str
    local_endpoint: bool  # controller-manager and scheduler talk to their own apiserver
    authority: str = KUBERNETES_CA

    def path(self, root: Path) -> Path:
        return root / self.name

    def csr_path(self, root: Path) -> Path:
        return root / f"{self.name}.csr"


CONTROL_PLANE_LEAVES = (
    LeafFile("apiserver", "apiserver", "apiserver", KUBERNETES_CA, extra_sans="apiserver"),
    LeafFile(
        "apiserver-kubelet-client",
        "apiserver-kubelet-client",
        "apiserver-kubelet-client",
        KUBERNETES_CA,
    ),
    LeafFile("front-proxy-client", "front-proxy-client", "front-proxy-client", FRONT_PROXY_CA),
    LeafFile("apiserver-etcd-client", "apiserver-etcd-client", "apiserver-etcd-client", ETCD_CA),
    LeafFile("etcd-server", "etcd/server", "etcd-server", ETCD_CA, extra_sans="etcd"),
    LeafFile("etcd-peer", "etcd/peer", "etcd-peer", ETCD_CA, extra_sans="etcd"),
    LeafFile(
        "etcd-healthcheck-client", "etcd/healthcheck-client", "etcd-healthcheck-client", ETCD_CA
    ),
)

ADMIN = KubeconfigFile("admin.conf", "admin", local_endpoint=False)
SUPER_ADMIN = KubeconfigFile("super-admin.conf", "super-admin", local_endpoint=False)
CONTROL_PLANE_KUBECONFIGS = (
    ADMIN,
    SUPER_ADMIN,
    KubeconfigFile("controller-manager.conf", "controller-manager", local_endpoint=True),
    KubeconfigFile("scheduler.conf", "scheduler", local_endpoint=True),
    KubeconfigFile("kubelet.conf", "kubelet-client", local_endpoint=False),
)

# A worker: the kubelet's client kubeconfig and its serving certificate (the files
# kubelet reads from --kubeconfig and --tls-cert-file/--tls-private-key-file).
WORKER_KUBELET_CONF = KubeconfigFile("kubelet.conf", "kubelet-client", local_endpoint=False)
WORKER_SERVING = LeafFile("kubelet", "kubelet", "kubelet-serving", KUBERNETES_CA)

# What `kubeadm certs check-expiration` lists, in its order (alphabetical).
CHECK_EXPIRATION_NAMES = (
    "admin.conf",
    "apiserver",
    "apiserver-etcd-client",
    "apiserver-kubelet-client",
    "controller-manager.conf",
    "etcd-healthcheck-client",
    "etcd-peer",
    "etcd-server",
    "front-proxy-client",
    "scheduler.conf",
    "super-admin.conf",
)

# Files the manifest records how each certificate was requested, so renew can ask again.
MANIFEST = ".kubeca-layout.json"
