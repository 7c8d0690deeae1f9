"""The names of kubeca's certificate authorities, defined once for client and server.

The client needs them to lay out kubeadm's files and the server to hold the keys; both
import them from here, so a CA's name is written in one place.
"""

from __future__ import annotations

from collections.abc import Mapping

KUBERNETES_CA = "kubernetes-ca"
ETCD_CA = "etcd-ca"
FRONT_PROXY_CA = "front-proxy-ca"
# Signs the service's own TLS certificate and operator client certificates; never a
# cluster certificate, and never trusted by the cluster.
SERVICE_CA = "kubeca-service-ca"

CLUSTER_CAS = (KUBERNETES_CA, ETCD_CA, FRONT_PROXY_CA)
ALL_CAS = (*CLUSTER_CAS, SERVICE_CA)

# The subject CN of each CA's certificate: kubeadm's own for the cluster CAs.
COMMON_NAMES: Mapping[str, str] = {
    KUBERNETES_CA: "kubernetes",
    ETCD_CA: "etcd-ca",
    FRONT_PROXY_CA: "front-proxy-ca",
    SERVICE_CA: "kubeca-service-ca",
}

# The service-account token signing key: not a CA (no certificates), but its key has
# generations in the same store role, so rotation uses the same verbs under this name.
SERVICE_ACCOUNT_KEY = "service-account"
