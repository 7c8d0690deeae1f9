"""The API layer: the only package that imports grpc.

``methods`` registers a service's methods once for all of them: it decodes raw request
bytes (so undecodable bytes are INVALID_ARGUMENT, not grpcio's INTERNAL), identifies
the caller, maps the error taxonomy to status codes, writes the audit record of every
refusal, and counts metrics. Each service module (``ca_service`` for kubeca.v1) is then
a table of small handlers from a request message to a response message. ``listeners``
binds mutual TLS, server TLS and unix sockets; ``health`` keeps grpc.health.v1 true to
the HSM and the store.
"""
