"""make demo: ask the signer for a service-account token as kube-apiserver does.

kube-apiserver dials the ExternalJWTSigner socket with insecure credentials and
authority ``localhost``, reads Metadata and FetchKeys, and for each token sends the
claims (base64url JSON) to Sign, then joins ``header.claims.signature`` itself. This
script does the same and verifies the token with PyJWT against the published key, so
the demo shows the fourth key working without a key file anywhere.

    python scripts/demo_signer.py SOCKET
"""

from __future__ import annotations

import base64
import json
import sys
import time
import uuid

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key
from kubeca_client._proto.externaljwt.v1 import externaljwt_pb2 as pb
from kubeca_client._proto.externaljwt.v1 import externaljwt_pb2_grpc as pb_grpc

ISSUER = "https://kubernetes.default.svc.cluster.local"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main(socket: str) -> int:
    channel = grpc.insecure_channel(
        f"unix://{socket}", options=[("grpc.default_authority", "localhost")]
    )
    signer = pb_grpc.ExternalJWTSignerStub(channel)
    metadata = signer.Metadata(pb.MetadataRequest(), timeout=5)
    keys = signer.FetchKeys(pb.FetchKeysRequest(), timeout=5)
    now = int(time.time())
    claims = {
        "aud": [ISSUER],
        "exp": now + 3600,
        "iat": now,
        "nbf": now,
        "iss": ISSUER,
        "jti": str(uuid.uuid4()),
        "sub": "system:serviceaccount:default:demo",
        "kubernetes.io": {
            "namespace": "default",
            "serviceaccount": {"name": "demo", "uid": str(uuid.uuid4())},
        },
    }
    encoded = b64(json.dumps(claims).encode())
    answer = signer.Sign(pb.SignJWTRequest(claims=encoded), timeout=5)
    token = f"{answer.header}.{encoded}.{answer.signature}"
    header = jwt.get_unverified_header(token)
    published = {key.key_id: key.key for key in keys.keys}
    public_key = load_der_public_key(published[header["kid"]])
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise SystemExit(f"FetchKeys published a {type(public_key).__name__}")
    verified = jwt.decode(
        token, public_key, algorithms=[header["alg"]], audience=ISSUER, issuer=ISSUER
    )
    print(
        f"signed a {header['alg']} token for {verified['sub']} with key {header['kid'][:12]}..."
        f" ({len(published)} published key(s), tokens up to"
        f" {metadata.max_token_expiration_seconds} s); PyJWT verifies it against FetchKeys"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
