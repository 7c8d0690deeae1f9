#!/usr/bin/env bash
# make demo: a dev SoftHSM token, the three CAs, the server, one certificate of every
# profile into demo/ (each verified against its CA), a summary, and the server stopped.
# Safe to run again: the token and CAs are kept, demo/ is written afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bin=$root/.venv/bin
var=$root/var
demo=$root/demo
export SOFTHSM2_CONF=$var/softhsm2.conf

python3 softhsm/dev_token.py "$var" --label kubeca-dev

# The config is written afresh each run (new free ports); the token, keys and CAs stay.
free_port() { "$bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
bootstrap_port=$(free_port)
cat > "$var/kubeca.toml" <<TOML
# Development server config written by make demo. See deploy/config/ for commented examples.
# Operators call the mutual-TLS port; nodes with bootstrap tokens call the bootstrap port.
listen = "127.0.0.1:$port"
listen_bootstrap = "127.0.0.1:$bootstrap_port"
metrics_listen = "127.0.0.1:$(free_port)"
state_dir = "state"
audit_log = "state/audit.log"

[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "kubeca-dev"
pin_file = "hsm-pin"

[authorities.kubernetes-ca]
key_algorithm = "ECDSA-P256"

[authorities.etcd-ca]
key_algorithm = "ECDSA-P256"

[authorities.front-proxy-ca]
key_algorithm = "ECDSA-P256"

[profiles]
# The demo shows every profile, so it enables super-admin (O=system:masters) on purpose,
# and the admin grant names it. Each such issuance is audited at critical severity.
enable_super_admin = true

[grants.admin]
profiles = ["*", "super-admin"]
node_names = ["*"]
san_dns = ["*"]
san_cidrs = ["0.0.0.0/0", "::/0"]
bootstrap_tokens = true
revoke = true

[service_account]
# The fourth key: kube-apiserver's ExternalJWTSigner, on a unix socket (mode 0600).
socket = "signer.sock"
TOML

"$bin/kubeca-server" --config "$var/kubeca.toml" init | tee "$var/init.out"
# The service CA's hash is the ledger's trust anchor: an operator keeps it elsewhere.
service_ca_hash=$(sed -n 's/^kubeca-service-ca: \(sha256:[0-9a-f]*\).*/\1/p' "$var/init.out")
if [ ! -f "$var/admin/client.key" ]; then
  "$bin/kubeca-server" --config "$var/kubeca.toml" credentials issue --name admin --out "$var/admin" > /dev/null
fi
cat > "$var/client.toml" <<TOML
address = "127.0.0.1:$port"
timeout_seconds = 10
ca_file = "admin/ca.crt"
cert_file = "admin/client.crt"
key_file = "admin/client.key"
TOML

"$bin/kubeca-server" --config "$var/kubeca.toml" serve > "$var/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT

kubeca() { "$bin/kubeca" --config "$var/client.toml" "$@"; }
for _ in $(seq 100); do
  kubeca ca --hash > /dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { echo "the server exited:"; cat "$var/server.log"; exit 1; }
  sleep 0.2
done

rm -rf "$demo"
mkdir -p "$demo/ca"
for authority in kubernetes-ca etcd-ca front-proxy-ca; do
  kubeca ca --authority $authority > "$demo/ca/$authority.crt"
done

node=(--param node_name=cp-1 --param advertise_address=192.0.2.10)
declare -A params=(
  [apiserver]="${node[*]} --param control_plane_endpoint=k8s.example.internal:6443"
  [etcd-server]="${node[*]}"
  [etcd-peer]="${node[*]}"
  [kubelet-client]="--param node_name=cp-1"
  [kubelet-serving]="--param node_name=cp-1 --param advertise_address=192.0.2.10"
)
profiles=$(kubeca profiles -o json | "$bin/python" -c 'import json,sys; print(" ".join(p["name"] for p in json.load(sys.stdin)))')

printf '\n%-26s %-15s %-58s %s\n' PROFILE CA SUBJECT "EXPIRES (UTC)"
for profile in $profiles; do
  # shellcheck disable=SC2086  # the parameters are meant to split into words
  kubeca issue --profile "$profile" ${params[$profile]:-} \
    --key-out "$demo/$profile.key" --cert-out "$demo/$profile.crt" --ca-out "$demo/$profile.ca.crt" > /dev/null
  openssl verify -CAfile "$demo/$profile.ca.crt" "$demo/$profile.crt" > /dev/null
  subject=$(openssl x509 -in "$demo/$profile.crt" -noout -subject -nameopt RFC2253 | sed 's/^subject=//')
  expires=$(openssl x509 -in "$demo/$profile.crt" -noout -enddate | sed 's/^notAfter=//')
  issuer=$(openssl x509 -in "$demo/$profile.ca.crt" -noout -subject -nameopt RFC2253 | sed 's/^subject=CN=//')
  printf '%-26s %-15s %-58s %s\n' "$profile" "$issuer" "$subject" "$expires"
done
echo
echo "$(ls "$demo"/*.crt | grep -vc '\.ca\.crt$') certificates in demo/, each verified by openssl against its CA."
echo "Keys were generated here (0600) and never sent; the CA keys stay in the SoftHSM token under var/tokens."
echo "Audit log: var/state/audit.log ($(wc -l < "$var/state/audit.log") records)."
echo
echo "A whole control-plane node in kubeadm's External CA layout, into demo/kubernetes:"
kubeca pki control-plane --node-name cp-1 --advertise-address 192.0.2.10 \
  --control-plane-endpoint k8s.example.internal:6443 --dir "$demo/kubernetes" | tail -n 1
echo
kubeca check-expiration --dir "$demo/kubernetes"
echo
echo "A worker joins with a one-time bootstrap token, trusting the service by its CA hash:"
kubeca token create --profiles kubelet-client,kubelet-serving --node-name worker-1 \
  --address 192.0.2.21 --ttl 15m -o json > "$var/token.json"
"$bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$var/token.json" > "$var/worker-1.token"
chmod 600 "$var/worker-1.token"
hash=$("$bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["ca_cert_hash"])' "$var/token.json")
"$bin/kubeca" pki worker --node-name worker-1 --address 192.0.2.21 \
  --control-plane-endpoint k8s.example.internal:6443 --dir "$demo/worker-1" \
  --server "127.0.0.1:$bootstrap_port" --ca-cert-hash "$hash" --token-file "$var/worker-1.token" | tail -n 1
echo "Using the same token again is refused:"
if "$bin/kubeca" pki worker --node-name worker-1 --address 192.0.2.21 \
  --control-plane-endpoint k8s.example.internal:6443 --dir "$demo/worker-1b" \
  --server "127.0.0.1:$bootstrap_port" --ca-cert-hash "$hash" --token-file "$var/worker-1.token"; then
  echo "ERROR: a used token was accepted"; exit 1
fi
rm -f "$var/token.json" "$var/worker-1.token"
echo
echo "The service-account key signs a token through the ExternalJWTSigner socket, as kube-apiserver asks:"
"$bin/python" scripts/demo_signer.py "$var/signer.sock"
echo
echo "The ledger: every decision above is in a hash chain, checkpointed with an HSM signature:"
"$bin/kubeca-server" --config "$var/kubeca.toml" audit checkpoint
"$bin/kubeca-server" --config "$var/kubeca.toml" audit verify --service-ca-hash "$service_ca_hash"
