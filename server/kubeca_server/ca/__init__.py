"""The certificate authorities: each CA and its key generations, the one way a CA key
signs (``signer``: prepare, then sign), the registry, creating and loading CAs
(``lifecycle``), CRLs, and the service's own TLS credentials."""
