"""kubeca server: the HSM-backed certificate authority service."""
