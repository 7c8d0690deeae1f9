"""The entry point pyvider discovers (group "pyvider" in pyproject.toml): every
component of the kubeca provider, registered by importing it."""

from kubeca_client.tfprovider.ca_certificates import CACertificates
from kubeca_client.tfprovider.certificate import Certificate
from kubeca_client.tfprovider.ephemeral import EphemeralCertificate
from kubeca_client.tfprovider.provider import KubecaProvider

__all__ = ["CACertificates", "Certificate", "EphemeralCertificate", "KubecaProvider"]
