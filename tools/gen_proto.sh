#!/usr/bin/env bash
# Generate the Python stubs of protos/pdplanner/v1 into clients/python/pdplanner/v1.
#
#   tools/gen_proto.sh           regenerate: *_pb2.py, *_pb2_grpc.py and their .pyi (mypy-protobuf)
#   tools/gen_proto.sh --check   regenerate into a temporary directory and fail (exit 1) when the
#                                committed stubs differ from what the .proto files produce
#
# Needs grpcio-tools and mypy-protobuf (protoc-gen-mypy, protoc-gen-mypy_grpc on PATH); `make proto`
# and `make proto-check` put the virtual environment's bin/ first on PATH. Protos are compiled in
# sorted order with `-I protos`, so the generated imports read `from pdplanner.v1 import x_pb2` and
# the output depends only on the .proto files and the generator versions.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
proto_root="$root/protos"
out_pkg="clients/python/pdplanner/v1"
target="$root/$out_pkg"

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

# The first Python that has grpc_tools: the one on PATH (make puts the venv first), then the repo's.
python=""
for candidate in "$(command -v python || true)" "$(command -v python3 || true)" "$root/.venv/bin/python"; do
  if [[ -n "$candidate" && -x "$candidate" ]] && "$candidate" -c 'import grpc_tools.protoc' 2>/dev/null; then
    python="$candidate"
    break
  fi
done
if [[ -z "$python" ]]; then
  echo "no Python with grpcio-tools found: run 'make dev' (pip install -e '.[dev]')" >&2
  exit 2
fi
for plugin in protoc-gen-mypy protoc-gen-mypy_grpc; do
  if ! command -v "$plugin" >/dev/null; then
    if [[ -x "$(dirname "$python")/$plugin" ]]; then
      PATH="$(dirname "$python"):$PATH"
    else
      echo "$plugin not found: install mypy-protobuf (pip install -e '.[dev]')" >&2
      exit 2
    fi
  fi
done

# The well-known types (timestamp.proto, struct.proto) ship inside grpc_tools.
wkt="$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

mapfile -t protos < <(cd "$proto_root" && find pdplanner -name '*.proto' | LC_ALL=C sort)
if [[ ${#protos[@]} -eq 0 ]]; then
  echo "no .proto files under $proto_root/pdplanner" >&2
  exit 2
fi

(
  cd "$proto_root"
  "$python" -m grpc_tools.protoc -I . -I "$wkt" \
    --python_out="$tmp" --grpc_python_out="$tmp" \
    --mypy_out="$tmp" --mypy_grpc_out="$tmp" \
    "${protos[@]}" 2> >(grep -v '^Writing mypy to' >&2)
)

# grpc_python_out writes a *_pb2_grpc module for every file; keep those of files with a service.
for proto in "${protos[@]}"; do
  if ! grep -q '^service ' "$proto_root/$proto"; then
    stem="$tmp/${proto%.proto}"
    rm -f "${stem}_pb2_grpc.py" "${stem}_pb2_grpc.pyi"
  fi
done

generated="$tmp/pdplanner/v1"
is_generated() { [[ "$1" == *_pb2.py || "$1" == *_pb2.pyi || "$1" == *_pb2_grpc.py || "$1" == *_pb2_grpc.pyi ]]; }

list_generated() {
  local dir="$1" f
  [[ -d "$dir" ]] || return 0
  for f in "$dir"/*; do
    [[ -f "$f" ]] && is_generated "$(basename "$f")" && basename "$f"
  done | LC_ALL=C sort
}

if [[ $check -eq 1 ]]; then
  drift=0
  if ! diff -u <(list_generated "$target") <(list_generated "$generated") >/dev/null; then
    echo "generated files differ in name from the .proto files:" >&2
    diff -u <(list_generated "$target") <(list_generated "$generated") >&2 || true
    drift=1
  fi
  while read -r name; do
    if [[ -f "$target/$name" ]] && ! diff -q "$target/$name" "$generated/$name" >/dev/null; then
      echo "stale: $out_pkg/$name" >&2
      drift=1
    fi
  done < <(list_generated "$generated")
  if [[ $drift -eq 1 ]]; then
    echo "the committed stubs in $out_pkg are out of date: run 'make proto' and commit them" >&2
    exit 1
  fi
  echo "stubs in $out_pkg match protos/"
  exit 0
fi

mkdir -p "$target"
while read -r name; do rm -f "$target/$name"; done < <(list_generated "$target")
while read -r name; do cp "$generated/$name" "$target/$name"; done < <(list_generated "$generated")
echo "generated $(list_generated "$target" | wc -l) files in $out_pkg"
