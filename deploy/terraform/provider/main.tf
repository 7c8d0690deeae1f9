# Example module: one control-plane node's seven kubeadm leaf certificates, signed by
# kubeca through its native provider (kubeca/kubeca), from the CSRs the node made.
#
# The node runs `kubeadm certs generate-csr --cert-dir <csr_dir>` (or any tool that
# writes <csr_dir>/<name>.csr); its keys never leave it. Terraform reads the CSRs,
# kubeca signs them in its HSM, and the state holds CSRs and certificates only: no
# private key of any kind, leaf or CA.
#
# Renewal: each certificate has `ready_for_renewal`; once it is inside its renewal
# window (renew_before of expiry, default the last third of its life) the next plan
# replaces it, as hashicorp/tls's tls_locally_signed_cert does. revoke_on_destroy
# revokes the replaced certificate too (the operator's grant needs revoke = true).
#
# Install the provider first: `kubeca terraform-provider install` (or `make
# terraform-provider`); see deploy/README.md ("Terraform").

terraform {
  required_version = ">= 1.10"

  required_providers {
    kubeca = {
      source = "kubeca/kubeca"
    }
  }
}

variable "client_config" {
  description = "Path of the operator's kubeca client config (TOML)."
  type        = string
}

variable "csr_dir" {
  description = "Where the node's CSRs are: <csr_dir>/apiserver.csr, <csr_dir>/etcd/server.csr, ..."
  type        = string
}

variable "node_name" {
  type = string
}

variable "advertise_address" {
  type = string
}

variable "lifetime" {
  description = "Requested lifetime, e.g. 8760h (null: the profiles' default)."
  type        = string
  default     = null
}

variable "renew_before" {
  description = "Plan the replacement this long before expiry (null: the last third of the life)."
  type        = string
  default     = null
}

variable "revoke_on_destroy" {
  type    = bool
  default = false
}

provider "kubeca" {
  client_config = var.client_config
}

locals {
  node = {
    node_name         = var.node_name
    advertise_address = var.advertise_address
  }
  # kubeadm's file name under pki/ => the kubeca profile and its parameters.
  leaves = {
    "apiserver"                = { profile = "apiserver", parameters = local.node }
    "apiserver-kubelet-client" = { profile = "apiserver-kubelet-client", parameters = {} }
    "apiserver-etcd-client"    = { profile = "apiserver-etcd-client", parameters = {} }
    "front-proxy-client"       = { profile = "front-proxy-client", parameters = {} }
    "etcd/server"              = { profile = "etcd-server", parameters = local.node }
    "etcd/peer"                = { profile = "etcd-peer", parameters = local.node }
    "etcd/healthcheck-client"  = { profile = "etcd-healthcheck-client", parameters = {} }
  }
}

data "kubeca_ca_certificates" "cluster" {}

resource "kubeca_certificate" "leaf" {
  for_each = local.leaves

  profile           = each.value.profile
  csr_pem           = file("${var.csr_dir}/${each.key}.csr")
  parameters        = each.value.parameters
  lifetime          = var.lifetime
  renew_before      = var.renew_before
  revoke_on_destroy = var.revoke_on_destroy
}

output "certificates" {
  description = "kubeadm's file name under pki/ (without .crt) => the certificate, PEM."
  value       = { for name, leaf in kubeca_certificate.leaf : name => leaf.cert_pem }
}

output "serials" {
  value = { for name, leaf in kubeca_certificate.leaf : name => leaf.serial }
}

output "ca_certificates" {
  description = "CA name => its certificate, PEM (ca.crt, etcd/ca.crt, front-proxy-ca.crt)."
  value       = data.kubeca_ca_certificates.cluster.certificate_pem
}

output "ca_cert_hash" {
  description = "For kubeadm join --discovery-token-ca-cert-hash."
  value       = data.kubeca_ca_certificates.cluster.ca_cert_hash["kubernetes-ca"]
}
