"""kubeca's native Terraform provider (source address kubeca/kubeca), built on pyvider.

- `provider.py`: the provider block (a client config, or its fields) and its connection
- `certificate.py`: resource kubeca_certificate, renewed in the plan like hashicorp/tls's
  tls_locally_signed_cert, optionally revoked on destroy
- `ephemeral.py`: ephemeral kubeca_certificate (Terraform 1.10+), never in plan or state
- `ca_certificates.py`: data source kubeca_ca_certificates
- `checks.py`: what a plan can refuse without the service, and with it (no pyvider)
- `install.py`: the launcher Terraform starts, in a filesystem mirror or for dev_overrides
- `serve.py`: the launcher's entry: pyvider's plugin server

Only `install.py` and `checks.py` load without pyvider (the `terraform` extra), so
`kubeca terraform-provider install` can say what is missing instead of failing to import.
The provider imports the client, never the server. No private key ever reaches it:
it takes CSRs and returns public certificates.
"""
