# Example module: the seven kubeadm control-plane leaf certificates of one node, signed
# by kubeca, delivered as a cloud-init `write_files` document.
#
# For each certificate: a leaf key (tls_private_key), a CSR for it (tls_cert_request,
# empty subject: kubeca's profile decides the subject and the SANs from the parameters),
# and a `data "external"` that runs `kubeca terraform`, Terraform's external-program
# protocol: the query below on stdin, the certificate on stdout.
#
# What lands in Terraform state, and what never does:
#   - The LEAF private keys: tls_private_key keeps private_key_pem in state, in plain
#     text, like every tls_private_key. Protect the state accordingly (an encrypted
#     backend with restricted access), or use ephemeral/ beside this file, where the
#     node makes its keys and Terraform never sees them.
#   - The CA private keys: never. They are generated inside kubeca's HSM, cannot be
#     exported, and sign there. That is the point: hashicorp/tls's tls_locally_signed_cert
#     would need the CA key as ca_private_key_pem, in state.
#   - The certificates and CA certificates (public) are in state, in the data sources'
#     results. The operator's credentials are in state only as file paths.
#   - ephemeral/ makes the same call with Terraform 1.10+'s ephemeral "local_command",
#     whose result is never written to the plan or the state.
#
# A data source is read on every plan. `kubeca terraform` is idempotent: for the same
# caller, profile, parameters and key, kubeca returns the same certificate (reused="true",
# no new signature) until it enters its renewal window (the last third of its lifetime);
# then the next plan shows the renewed certificate, and so a changed cloud-init document.
# cloud-init applies it at first boot only: feed it to an instance with
# `lifecycle { ignore_changes = [user_data] }` unless you mean to replace the node. A
# running node renews with `kubeca renew` (deploy/systemd/kubeca-renew.timer) only for
# layouts kubeca wrote itself (kubeca pki / sign-csrs), not for these files.
#
# The operator identity (its client certificate's CN) needs a grant in the server config
# covering all seven profiles, the node name, and every DNS name and address below; see
# deploy/README.md ("Terraform").
#
# `kubeca` must be on PATH where Terraform runs (e.g. /opt/kubeca/.venv/bin).

terraform {
  required_version = ">= 1.3"

  required_providers {
    external = {
      source  = "hashicorp/external"
      version = ">= 2.3"
    }
    tls = {
      source  = "hashicorp/tls"
      version = ">= 4.0"
    }
    local = {
      source  = "hashicorp/local"
      version = ">= 2.4"
    }
  }
}

# --- How to reach kubeca ------------------------------------------------------------

variable "kubeca_server" {
  description = "HOST:PORT of kubeca's operator port (mutual TLS), e.g. kubeca.example.internal:7443."
  type        = string
}

variable "kubeca_ca_file" {
  description = "The kubeca service CA certificate (ca.crt from `kubeca-server credentials issue`). Exactly one of this and kubeca_ca_cert_hash."
  type        = string
  default     = null
}

variable "kubeca_ca_cert_hash" {
  description = "sha256:<hex> pin of the kubeca service CA (`kubeca ca --hash` prints it), instead of kubeca_ca_file."
  type        = string
  default     = null
}

variable "kubeca_cert_file" {
  description = "The operator's client certificate (client.crt from `kubeca-server credentials issue`)."
  type        = string
}

variable "kubeca_key_file" {
  description = "The operator's client key (client.key). Only the path goes into the query and the state."
  type        = string
}

variable "kubeca_timeout_seconds" {
  description = "Bound on each call to kubeca (Terraform has no timeout for external programs)."
  type        = number
  default     = 30
}

# --- The node -------------------------------------------------------------------------

variable "node_name" {
  description = "The node's name (a DNS-1123 name): etcd's CN and a SAN of apiserver and etcd."
  type        = string
}

variable "advertise_address" {
  description = "The node's IP address: a SAN of apiserver, etcd-server and etcd-peer."
  type        = string
}

variable "control_plane_endpoint" {
  description = "The shared API endpoint, HOST or HOST:PORT; its host becomes an apiserver SAN."
  type        = string
  default     = null
}

variable "service_cidr" {
  description = "The service network; its first address becomes an apiserver SAN. kubeca's default: 10.96.0.0/12."
  type        = string
  default     = null
}

variable "dns_domain" {
  description = "The cluster DNS domain (kubernetes.default.svc.<dns_domain>). kubeca's default: cluster.local."
  type        = string
  default     = null
}

variable "apiserver_extra_sans" {
  description = "More apiserver SANs: IP addresses, DNS names, *.wildcards."
  type        = list(string)
  default     = []
}

variable "etcd_extra_sans" {
  description = "More SANs for etcd-server and etcd-peer."
  type        = list(string)
  default     = []
}

variable "lifetime_seconds" {
  description = "Requested certificate lifetime in seconds; null for the server's default (365 days unless configured). The grant's max_lifetime_days caps it."
  type        = number
  default     = null
}

variable "key_algorithm" {
  description = "Leaf key type, in kubeadm's names: ECDSA-P256, ECDSA-P384, RSA-2048, RSA-3072 or RSA-4096."
  type        = string
  default     = "ECDSA-P256"

  validation {
    condition     = contains(["ECDSA-P256", "ECDSA-P384", "RSA-2048", "RSA-3072", "RSA-4096"], var.key_algorithm)
    error_message = "key_algorithm must be one of ECDSA-P256, ECDSA-P384, RSA-2048, RSA-3072, RSA-4096."
  }
}

# --- Delivery -------------------------------------------------------------------------

variable "pki_dir" {
  description = "Where the files go on the node."
  type        = string
  default     = "/etc/kubernetes/pki"
}

variable "cloud_init_file" {
  description = "If set, the cloud-init document (with the leaf keys) is also written to this local file, mode 0600."
  type        = string
  default     = null
}

locals {
  key_types = {
    "ECDSA-P256" = { algorithm = "ECDSA", ecdsa_curve = "P256", rsa_bits = null }
    "ECDSA-P384" = { algorithm = "ECDSA", ecdsa_curve = "P384", rsa_bits = null }
    "RSA-2048"   = { algorithm = "RSA", ecdsa_curve = null, rsa_bits = 2048 }
    "RSA-3072"   = { algorithm = "RSA", ecdsa_curve = null, rsa_bits = 3072 }
    "RSA-4096"   = { algorithm = "RSA", ecdsa_curve = null, rsa_bits = 4096 }
  }
  key_type = local.key_types[var.key_algorithm]

  # The query keys of `kubeca terraform` (client/kubeca_client/terraform.py) that say
  # where kubeca is and who asks. All values are strings; unset ones are left out.
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

  # Each profile's parameters, as the JSON-encoded object of strings the query's
  # `parameters` key takes; unset optional parameters are left out (a profile refuses
  # parameters it does not take).
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

  # kubeadm's certificate list for a control-plane node: profile, and file name under
  # pki_dir without .crt/.key.
  certificates = {
    "apiserver"                = { profile = "apiserver", file = "apiserver", parameters = local.apiserver_parameters }
    "apiserver-kubelet-client" = { profile = "apiserver-kubelet-client", file = "apiserver-kubelet-client", parameters = local.no_parameters }
    "front-proxy-client"       = { profile = "front-proxy-client", file = "front-proxy-client", parameters = local.no_parameters }
    "apiserver-etcd-client"    = { profile = "apiserver-etcd-client", file = "apiserver-etcd-client", parameters = local.no_parameters }
    "etcd-server"              = { profile = "etcd-server", file = "etcd/server", parameters = local.etcd_parameters }
    "etcd-peer"                = { profile = "etcd-peer", file = "etcd/peer", parameters = local.etcd_parameters }
    "etcd-healthcheck-client"  = { profile = "etcd-healthcheck-client", file = "etcd/healthcheck-client", parameters = local.no_parameters }
  }

  # Which certificate's issuing CA fills each CA file kubeadm expects (External CA mode:
  # the CA certificates are present, their keys are not).
  ca_files = {
    "ca.crt"             = "apiserver"
    "front-proxy-ca.crt" = "front-proxy-client"
    "etcd/ca.crt"        = "etcd-server"
  }
}

# The leaf keys. In state, in plain text (see the top of this file).
resource "tls_private_key" "leaf" {
  for_each = local.certificates

  algorithm   = local.key_type.algorithm
  ecdsa_curve = local.key_type.ecdsa_curve
  rsa_bits    = local.key_type.rsa_bits
}

# A CSR proves possession of the key and carries the public key; nothing else in it
# matters: no subject, no SANs, kubeca's profile supplies both.
resource "tls_cert_request" "leaf" {
  for_each = local.certificates

  private_key_pem = tls_private_key.leaf[each.key].private_key_pem
}

data "external" "certificate" {
  for_each = local.certificates

  program = ["kubeca", "terraform"]

  query = merge(local.connection, {
    profile    = each.value.profile
    csr_pem    = tls_cert_request.leaf[each.key].cert_request_pem
    parameters = each.value.parameters
  })

  lifecycle {
    precondition {
      condition     = (var.kubeca_ca_file == null) != (var.kubeca_ca_cert_hash == null)
      error_message = "Set exactly one of kubeca_ca_file and kubeca_ca_cert_hash."
    }
  }
}

locals {
  # result: certificate_pem, ca_pem, serial, not_before, not_after, fingerprint_sha256,
  # authority, reused ("true" when kubeca returned the certificate it issued before).
  issued = { for name, source in data.external.certificate : name => source.result }

  write_files = concat(
    [
      for file, source in local.ca_files : {
        path        = "${var.pki_dir}/${file}"
        owner       = "root:root"
        permissions = "0644"
        content     = local.issued[source].ca_pem
      }
    ],
    flatten([
      for name, certificate in local.certificates : [
        {
          path        = "${var.pki_dir}/${certificate.file}.crt"
          owner       = "root:root"
          permissions = "0644"
          content     = local.issued[name].certificate_pem
        },
        {
          path        = "${var.pki_dir}/${certificate.file}.key"
          owner       = "root:root"
          permissions = "0600"
          content     = tls_private_key.leaf[name].private_key_pem
        },
      ]
    ]),
  )

  # yamlencode writes each PEM as a YAML block scalar; no template indentation to get
  # wrong. The keys make this value sensitive.
  cloud_init = "#cloud-config\n${yamlencode({ write_files = local.write_files })}"
}

resource "local_sensitive_file" "cloud_init" {
  count = var.cloud_init_file == null ? 0 : 1

  filename        = var.cloud_init_file
  content         = local.cloud_init
  file_permission = "0600"
}

output "certificates" {
  description = "Per certificate name: the certificate, its CA, serial, expiry, and whether kubeca reused it."
  value = {
    for name, result in local.issued : name => {
      certificate_pem = result.certificate_pem
      ca_pem          = result.ca_pem
      authority       = result.authority
      serial          = result.serial
      not_after       = result.not_after
      reused          = result.reused == "true"
    }
  }
}

output "ca_certificates" {
  description = "The CA certificates by kubeadm file name (ca.crt, front-proxy-ca.crt, etcd/ca.crt)."
  value       = { for file, source in local.ca_files : file => local.issued[source].ca_pem }
}

output "private_keys" {
  description = "The leaf keys by certificate name (PEM)."
  value       = { for name, key in tls_private_key.leaf : name => key.private_key_pem }
  sensitive   = true
}

output "cloud_init" {
  description = "A #cloud-config document whose write_files puts every certificate, key and CA certificate under pki_dir (user_data for the node)."
  value       = local.cloud_init
  sensitive   = true
}
