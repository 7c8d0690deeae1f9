#!/bin/sh
# kubeca-server's container entrypoint.
#
#   serve [ARGS]   (the default) create the development SoftHSM token if the config uses
#                  SoftHSM and it does not exist yet, run init (idempotent), then serve
#   anything else  run kubeca-server --config "$KUBECA_CONFIG" with those arguments
#                  (init, credentials issue ..., audit verify, audit checkpoint)
set -eu

config=${KUBECA_CONFIG:-/etc/kubeca/kubeca.toml}
venv=/opt/kubeca/.venv
server="$venv/bin/kubeca-server"

if [ "${1:-serve}" != serve ]; then
    exec "$server" --config "$config" "$@"
fi
if [ "$#" -gt 0 ]; then shift; fi

# The [hsm] module and token label, read from the config (the same default as the server).
hsm_setting() {
    "$venv/bin/python" - "$config" "$1" "$2" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as handle:
    hsm = tomllib.load(handle).get("hsm", {})
print(hsm.get(sys.argv[2], sys.argv[3]))
PY
}
module=$(hsm_setting module /usr/lib/softhsm/libsofthsm2.so)

case "$module" in
*/libsofthsm2.so)
    # Development only: the token, its config and both PINs live in the volume.
    : "${SOFTHSM2_CONF:?SOFTHSM2_CONF must name DIR/softhsm2.conf for the SoftHSM token}"
    label=$(hsm_setting token_label kubeca-dev)
    python3 /opt/kubeca/dev_token.py "$(dirname "$SOFTHSM2_CONF")" --label "$label"
    ;;
*)
    echo "kubeca: PKCS#11 module $module (no development token is created)"
    ;;
esac

"$server" --config "$config" init
exec "$server" --config "$config" serve "$@"
