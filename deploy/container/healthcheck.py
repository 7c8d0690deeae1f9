"""Is kubeca-server serving? Asks its gRPC health service on the bootstrap port.

    python healthcheck.py [--address 127.0.0.1:7444] [--ca-file FILE] [--server-name NAME]

Exit 0 when the server answers SERVING (it does while every CA key in the HSM can be
used), 1 when it answers anything else or cannot be reached within the timeout. Uses
only what kubeca-server's virtualenv has (grpcio, grpcio-health-checking): run it with
/opt/kubeca/.venv/bin/python. The bootstrap port needs no client certificate; the
server's certificate is checked against the service CA, for a name in tls.server_names.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="127.0.0.1:7444", help="the bootstrap port")
    parser.add_argument("--ca-file", default="/var/lib/kubeca/ca/kubeca-service-ca.crt")
    parser.add_argument("--server-name", default="localhost", help="a name in tls.server_names")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    try:
        with open(args.ca_file, "rb") as handle:
            root = handle.read()
    except OSError as exc:
        print(f"healthcheck: cannot read {args.ca_file}: {exc.strerror}", file=sys.stderr)
        return 1
    options = [("grpc.ssl_target_name_override", args.server_name)]
    credentials = grpc.ssl_channel_credentials(root_certificates=root)
    with grpc.secure_channel(args.address, credentials, options=options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(f"healthcheck: {args.address}: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
