#!/usr/bin/env bash
# Generate the client stubs of protos/pdplanner/v1 for Python, Go and TypeScript.
#
#   tools/gen_proto.sh           regenerate them all
#   tools/gen_proto.sh --check   regenerate into a temporary directory and fail (exit 1) when any
#                                committed stub differs from what the .proto files produce
#
#   language    output                               generators
#   Python      pdplanner/v1/         grpcio-tools, mypy-protobuf (the venv)
#   Go          clients/go/pdplanner/v1/             protoc-gen-go, protoc-gen-go-grpc (Debian:
#                                                    apt-get install protoc-gen-go protoc-gen-go-grpc)
#   TypeScript  clients/node/src/pdplanner/v1/       protoc-gen-es (clients/node: npm ci)
#
# grpc_tools.protoc from the virtual environment drives every plugin, so one protoc version makes
# all three; `make proto` and `make proto-check` put the venv's bin/ first on PATH. Protos are
# compiled in sorted order with `-I protos`, so the output depends only on the .proto files and the
# generator versions. Where the Go or TypeScript generators are missing, that language is skipped
# with a warning, except under CI (env CI set), where a missing generator is an error.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
proto_root="$root/protos"

check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

# Under CI every generator must be there; elsewhere a language without one is skipped.
missing() {
  if [[ -n "${CI:-}" ]]; then
    echo "error: $1" >&2
    exit 2
  fi
  echo "warning: skipping $2: $1" >&2
}

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

protoc() {  # protoc ARGS...: run grpc_tools.protoc on every proto from protos/
  (cd "$proto_root" && "$python" -m grpc_tools.protoc -I . -I "$wkt" "$@" "${protos[@]}")
}

# Each language: a name, its directory in the repository, the pattern of its generated files.
languages=()

# Python: messages, services and their .pyi.
mkdir -p "$tmp/python"
protoc --python_out="$tmp/python" --grpc_python_out="$tmp/python" \
  --mypy_out="$tmp/python" --mypy_grpc_out="$tmp/python" 2> >(grep -v '^Writing mypy to' >&2)
# grpc_python_out writes a *_pb2_grpc module for every file; keep those of files with a service.
for proto in "${protos[@]}"; do
  if ! grep -q '^service ' "$proto_root/$proto"; then
    stem="$tmp/python/${proto%.proto}"
    rm -f "${stem}_pb2_grpc.py" "${stem}_pb2_grpc.pyi"
  fi
done
languages+=("python|pdplanner/v1|$tmp/python/pdplanner/v1|*_pb2.py *_pb2.pyi *_pb2_grpc.py *_pb2_grpc.pyi")

# Go: the go_package option of the protos names the package; module= strips the module path.
go_module="pdplanner/clients/go"
if command -v protoc-gen-go >/dev/null && command -v protoc-gen-go-grpc >/dev/null; then
  mkdir -p "$tmp/go"
  protoc --go_out="$tmp/go" --go_opt=module="$go_module" \
    --go-grpc_out="$tmp/go" --go-grpc_opt=module="$go_module"
  languages+=("go|clients/go/pdplanner/v1|$tmp/go/pdplanner/v1|*.pb.go")
else
  missing "protoc-gen-go or protoc-gen-go-grpc not found (apt-get install protoc-gen-go protoc-gen-go-grpc)" Go
fi

# TypeScript: protoc-gen-es (Protobuf-ES v2) writes messages and service descriptors for Connect.
es_plugin="$root/clients/node/node_modules/.bin/protoc-gen-es"
if [[ -x "$es_plugin" ]] && command -v node >/dev/null; then
  mkdir -p "$tmp/ts"
  protoc --plugin=protoc-gen-es="$es_plugin" --es_out="$tmp/ts" \
    --es_opt=target=ts,import_extension=js
  languages+=("typescript|clients/node/src/pdplanner/v1|$tmp/ts/pdplanner/v1|*_pb.ts")
else
  missing "node or protoc-gen-es not found (Node.js 20+, then: cd clients/node && npm ci)" TypeScript
fi

list_generated() {  # list_generated DIR PATTERNS: the generated files' names in DIR, sorted
  local dir="$1" patterns="$2" f pattern
  [[ -d "$dir" ]] || return 0
  for f in "$dir"/*; do
    [[ -f "$f" ]] || continue
    for pattern in $patterns; do
      # shellcheck disable=SC2053  # the pattern is a glob on purpose
      if [[ "$(basename "$f")" == $pattern ]]; then
        basename "$f"
        break
      fi
    done
  done | LC_ALL=C sort
}

status=0
for entry in "${languages[@]}"; do
  IFS='|' read -r name out generated patterns <<<"$entry"
  target="$root/$out"
  if [[ $check -eq 1 ]]; then
    drift=0
    if ! diff -q <(list_generated "$target" "$patterns") <(list_generated "$generated" "$patterns") >/dev/null; then
      echo "generated $name files differ in name from the .proto files:" >&2
      diff -u <(list_generated "$target" "$patterns") <(list_generated "$generated" "$patterns") >&2 || true
      drift=1
    fi
    while read -r file; do
      if [[ -f "$target/$file" ]] && ! diff -q "$target/$file" "$generated/$file" >/dev/null; then
        echo "stale: $out/$file" >&2
        drift=1
      fi
    done < <(list_generated "$generated" "$patterns")
    if [[ $drift -eq 1 ]]; then
      echo "the committed $name stubs in $out are out of date: run 'make proto' and commit them" >&2
      status=1
    else
      echo "$name stubs in $out match protos/"
    fi
  else
    mkdir -p "$target"
    while read -r file; do rm -f "$target/$file"; done < <(list_generated "$target" "$patterns")
    while read -r file; do cp "$generated/$file" "$target/$file"; done < <(list_generated "$generated" "$patterns")
    echo "generated $(list_generated "$target" "$patterns" | wc -l) $name files in $out"
  fi
done
exit $status
