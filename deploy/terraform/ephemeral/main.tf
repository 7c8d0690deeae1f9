# The same certificates as ../main.tf, without Terraform state: Terraform 1.10+ and
# hashicorp/local >= 2.7.0's ephemeral "local_command" runs `kubeca terraform` with the
# same JSON query on stdin, and its stdout (the certificate) is never written to the
# plan or the state.
#
# Where the CSRs come from: the node. It makes its own keys and CSRs, for instance with
#     kubeadm certs generate-csr --cert-dir /etc/kubernetes/pki --kubeconfig-dir /etc/kubernetes
# (pki/apiserver.key + pki/apiserver.csr, pki/etcd/server.key + .csr, ...), or with
#     openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj / \
#         -keyout apiserver.key -out apiserver.csr
# and hands over only the CSRs (public), e.g. collected over SSH or from an object
# store, passed in as the variable `csrs`. So no private key exists anywhere near
# Terraform, and the certificates pass through it without being stored:
#   - in state: the CSRs' SHA-256 (triggers_replace below) and the file paths. No key,
#     no certificate. (Variable values, the CSRs, are saved in a plan file; they are public.)
#   - never in plan or state: the certificates (ephemeral), any private key.
#
# A CSR from kubeadm carries a subject and SANs; kubeca accepts them when they are exactly
# what the profile computes from the parameters below, so give the same node name,
# addresses and extra SANs as in the kubeadm configuration.
#
# Ephemeral values can go only where Terraform does not store them: other ephemeral
# resources, provider configuration, write-only attributes (Terraform 1.11+, e.g. a
# secret store's *_wo argument), and provisioners. Here a provisioner copies each
# certificate to the node over SSH. It runs when the CSR changes (a new key on the node);
# to deliver a renewed certificate for the same CSR, run
#     terraform apply -replace='terraform_data.certificate["apiserver"]'
# Terraform opens the ephemeral resource during plan and apply; kubeca answers the same
# request with the same certificate (no new signature) until its renewal window.

terraform {
  required_version = ">= 1.10"

  required_providers {
    local = {
      source  = "hashicorp/local"
      version = ">= 2.7.0"
    }
  }
}

# --- How to reach kubeca (as in ../main.tf) ------------------------------------------

variable "kubeca_server" {
  description = "HOST:PORT of kubeca's operator port (mutual TLS)."
  type        = string
}

variable "kubeca_ca_file" {
  description = "The kubeca service CA certificate. Exactly one of this and kubeca_ca_cert_hash."
  type        = string
  default     = null
}

variable "kubeca_ca_cert_hash" {
  description = "sha256:<hex> pin of the kubeca service CA, instead of kubeca_ca_file."
  type        = string
  default     = null

  # Terraform 1.9+ lets a validation refer to other variables.
  validation {
    condition     = (var.kubeca_ca_file == null) != (var.kubeca_ca_cert_hash == null)
    error_message = "Set exactly one of kubeca_ca_file and kubeca_ca_cert_hash."
  }
}

variable "kubeca_cert_file" {
  description = "The operator's client certificate."
  type        = string
}

variable "kubeca_key_file" {
  description = "The operator's client key."
  type        = string
}

variable "kubeca_timeout_seconds" {
  description = "Bound on each call to kubeca."
  type        = number
  default     = 30
}

# --- The node -------------------------------------------------------------------------

variable "csrs" {
  description = "The node's CSRs (PEM) by certificate name: apiserver, apiserver-kubelet-client, front-proxy-client, apiserver-etcd-client, etcd-server, etcd-peer, etcd-healthcheck-client. Any subset."
  type        = map(string)

  validation {
    condition = alltrue([
      for name in keys(var.csrs) : contains([
        "apiserver", "apiserver-kubelet-client", "front-proxy-client", "apiserver-etcd-client",
        "etcd-server", "etcd-peer", "etcd-healthcheck-client",
      ], name)
    ])
    error_message = "csrs: unknown certificate name; known: apiserver, apiserver-kubelet-client, front-proxy-client, apiserver-etcd-client, etcd-server, etcd-peer, etcd-healthcheck-client."
  }
}

variable "node_name" {
  description = "The node's name."
  type        = string
}

variable "advertise_address" {
  description = "The node's IP address."
  type        = string
}

variable "control_plane_endpoint" {
  description = "The shared API endpoint, HOST or HOST:PORT."
  type        = string
  default     = null
}

variable "service_cidr" {
  description = "The service network (kubeca's default: 10.96.0.0/12)."
  type        = string
  default     = null
}

variable "dns_domain" {
  description = "The cluster DNS domain (kubeca's default: cluster.local)."
  type        = string
  default     = null
}

variable "apiserver_extra_sans" {
  description = "More apiserver SANs."
  type        = list(string)
  default     = []
}

variable "etcd_extra_sans" {
  description = "More SANs for etcd-server and etcd-peer."
  type        = list(string)
  default     = []
}

variable "lifetime_seconds" {
  description = "Requested lifetime in seconds; null for the server's default."
  type        = number
  default     = null
}

# --- Delivery over SSH ----------------------------------------------------------------

variable "ssh_host" {
  description = "Address the provisioner connects to (the node)."
  type        = string
}

variable "ssh_user" {
  description = "SSH user; must be able to write pki_dir (kubeadm's files are root's)."
  type        = string
  default     = "root"
}

variable "pki_dir" {
  description = "Where the certificates go on the node; the CSRs' directories, which exist already."
  type        = string
  default     = "/etc/kubernetes/pki"
}

locals {
  connection = {
    for key, value in {
      server          = var.kubeca_server
      ca_file         = var.kubeca_ca_file
      ca_cert_hash    = var.kubeca_ca_cert_hash
      cert_file       = var.kubeca_cert_file
      key_file        = var.kubeca_key_file
      timeout_seconds = tostring(var.kubeca_timeout_seconds)
      lifetime        = var.lifetime_seconds == null ? null : tostring(var.lifetime_seconds)
    } : key => value if value != null
  }

  node = {
    node_name         = var.node_name
    advertise_address = var.advertise_address
  }
  apiserver_parameters = jsonencode({
    for key, value in merge(local.node, {
      control_plane_endpoint = var.control_plane_endpoint
      service_cidr           = var.service_cidr
      dns_domain             = var.dns_domain
      extra_sans             = join(",", var.apiserver_extra_sans)
    }) : key => value if value != null && value != ""
  })
  etcd_parameters = jsonencode({
    for key, value in merge(local.node, {
      extra_sans = join(",", var.etcd_extra_sans)
    }) : key => value if value != ""
  })
  no_parameters = jsonencode({})

  all_certificates = {
    "apiserver"                = { profile = "apiserver", file = "apiserver", parameters = local.apiserver_parameters }
    "apiserver-kubelet-client" = { profile = "apiserver-kubelet-client", file = "apiserver-kubelet-client", parameters = local.no_parameters }
    "front-proxy-client"       = { profile = "front-proxy-client", file = "front-proxy-client", parameters = local.no_parameters }
    "apiserver-etcd-client"    = { profile = "apiserver-etcd-client", file = "apiserver-etcd-client", parameters = local.no_parameters }
    "etcd-server"              = { profile = "etcd-server", file = "etcd/server", parameters = local.etcd_parameters }
    "etcd-peer"                = { profile = "etcd-peer", file = "etcd/peer", parameters = local.etcd_parameters }
    "etcd-healthcheck-client"  = { profile = "etcd-healthcheck-client", file = "etcd/healthcheck-client", parameters = local.no_parameters }
  }
  # Only those the node sent a CSR for.
  certificates = { for name, certificate in local.all_certificates : name => certificate if contains(keys(var.csrs), name) }

  # Each CA file kubeadm expects, from the first certificate issued under that CA.
  ca_sources = {
    "ca.crt"             = ["apiserver", "apiserver-kubelet-client"]
    "front-proxy-ca.crt" = ["front-proxy-client"]
    "etcd/ca.crt"        = ["etcd-server", "etcd-peer", "etcd-healthcheck-client", "apiserver-etcd-client"]
  }
  ca_files = {
    for file, names in local.ca_sources : file => [for name in names : name if contains(keys(var.csrs), name)][0]
    if length([for name in names : name if contains(keys(var.csrs), name)]) > 0
  }
}

ephemeral "local_command" "certificate" {
  for_each = local.certificates

  command   = "kubeca"
  arguments = ["terraform"]
  # The same protocol as data "external": one JSON object of strings on stdin.
  stdin = jsonencode(merge(local.connection, {
    profile    = each.value.profile
    csr_pem    = var.csrs[each.key]
    parameters = each.value.parameters
  }))
}

locals {
  # Ephemeral, like everything computed from an ephemeral resource: usable only in the
  # places listed at the top of this file.
  issued = { for name, run in ephemeral.local_command.certificate : name => jsondecode(run.stdout) }
}

resource "terraform_data" "certificate" {
  for_each = local.certificates

  # Public, and what makes a new certificate necessary: a new CSR (a new key).
  triggers_replace = sha256(var.csrs[each.key])

  connection {
    type  = "ssh"
    host  = var.ssh_host
    user  = var.ssh_user
    agent = true
  }

  provisioner "file" {
    content     = local.issued[each.key].certificate_pem
    destination = "${var.pki_dir}/${each.value.file}.crt"
  }
}

resource "terraform_data" "ca_certificate" {
  for_each = local.ca_files

  # CA certificates change only when a CA is replaced; this re-delivers them whenever
  # the certificate they were taken from is re-delivered.
  triggers_replace = sha256(var.csrs[each.value])

  connection {
    type  = "ssh"
    host  = var.ssh_host
    user  = var.ssh_user
    agent = true
  }

  provisioner "file" {
    content     = local.issued[each.value].ca_pem
    destination = "${var.pki_dir}/${each.key}"
  }
}
