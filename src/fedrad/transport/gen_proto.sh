#!/usr/bin/env bash
# Regenerates fedrad_pb2.py and fedrad_pb2.pyi from fedrad.proto (run from anywhere).
# Only message classes are generated: the gRPC service is wired by hand in grpc_transport.py /
# grpc_client.py, so there is no *_pb2_grpc.py and no pin on the grpcio-tools version at runtime.
# Generated with grpcio-tools 1.85.1 (bundled protoc), checked against the protobuf 7.36.2 runtime.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
cd "$root/src"
"$python" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. fedrad/transport/fedrad.proto fedrad/secagg/secagg.proto
# Generated code is not ours to lint.
for f in fedrad/transport/fedrad_pb2.py fedrad/transport/fedrad_pb2.pyi fedrad/secagg/secagg_pb2.py fedrad/secagg/secagg_pb2.pyi; do
    printf '# ruff: noqa\n%s\n' "$(cat "$f")" > "$f"
done
"$python" -c "import fedrad.transport.fedrad_pb2 as pb, fedrad.secagg.secagg_pb2 as sa; print('ok', pb.DESCRIPTOR.name, sa.DESCRIPTOR.name)"
