#!/usr/bin/env bash
# Generates the client's private protobuf package from proto/.
# Usage: gen-proto.sh PYTHON OUT_DIR
# The virtual include path maps proto/ to kubeca_client/_proto, so the generated
# imports name kubeca_client._proto.kubeca.v1 while the wire package stays kubeca.v1.
set -euo pipefail
py=$1
out=$2
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$(dirname "$py")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
"$py" -m grpc_tools.protoc \
  -I"kubeca_client/_proto=$here/proto" \
  --plugin=protoc-gen-mypy="$bin/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$bin/protoc-gen-mypy_grpc" \
  --python_out="$stage" --grpc_python_out="$stage" \
  --mypy_out=quiet:"$stage" --mypy_grpc_out=quiet:"$stage" \
  "kubeca_client/_proto/kubeca/v1/kubeca.proto" \
  "kubeca_client/_proto/externaljwt/v1/externaljwt.proto" \
  "kubeca_client/_proto/externaljwt/v1alpha1/externaljwt.proto"
mkdir -p "$out"
rm -rf "$out/kubeca" "$out/externaljwt"
cp -r "$stage/kubeca_client/_proto/kubeca" "$stage/kubeca_client/_proto/externaljwt" "$out/"
for d in "$out/kubeca" "$out/kubeca/v1" "$out/externaljwt" "$out/externaljwt/v1" "$out/externaljwt/v1alpha1"; do
  [ -f "$d/__init__.py" ] || : > "$d/__init__.py"
done
[ -f "$out/__init__.py" ] || printf '"""Generated gRPC code; regenerate with make proto, never edit."""\n' > "$out/__init__.py"
echo "generated $out/kubeca/v1 $out/externaljwt/{v1,v1alpha1}"
