#!/usr/bin/env bash
# Build this module against Debian's packaged Go sources instead of the Go module proxy.
#
#   apt-get install golang-go golang-google-grpc-dev golang-google-protobuf-dev \
#       golang-github-golang-protobuf-1-5-dev
#   ./vendor-debian.sh          # then: go run ./example HOST:PORT
#
# Debian installs library sources under /usr/share/gocode/src/<import path>. This script makes
# vendor/ (ignored by git) a set of links into that tree and writes vendor/modules.txt with the
# modules go.mod requires, so the go command builds in its vendor mode (the default when vendor/
# exists) and never looks for a module proxy. It refuses to link a module whose Debian package
# version differs from the version go.mod requires, so go.mod stays the truth about what is built.
# Where the module proxy is reachable, skip this script: `go mod tidy && go run ./example HOST:PORT`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

gocode="${GOCODE:-/usr/share/gocode/src}"

# Modules that go.mod requires, with the Debian package that ships each one.
declare -A direct=(
  [google.golang.org/grpc]=golang-google-grpc-dev
  [google.golang.org/protobuf]=golang-google-protobuf-dev
)
# Modules the two above import (not named in go.mod: Go resolves them inside vendor/).
indirect=(github.com/golang/protobuf golang.org/x/net golang.org/x/sys golang.org/x/text
          google.golang.org/genproto)

required_version() {  # the version go.mod requires of module $1
  awk -v m="$1" '$1 == m { print $2 }' go.mod
}

tmp="$(mktemp -d vendor.tmp.XXXXXX)"
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
: >"$tmp/modules.txt"
for module in $(printf '%s\n' "${!direct[@]}" | LC_ALL=C sort); do
  want="$(required_version "$module")"
  have="$(dpkg-query -W -f '${Version}' "${direct[$module]}" 2>/dev/null || true)"
  if [[ -z "$have" ]]; then
    echo "error: ${direct[$module]} is not installed (apt-get install ${direct[$module]})" >&2
    exit 1
  fi
  # Debian versions read [epoch:]upstream-revision; go.mod's read v<upstream>.
  upstream="${have#*:}"
  upstream="${upstream%-*}"
  if [[ "v$upstream" != "$want" ]]; then
    echo "error: go.mod requires $module $want but ${direct[$module]} is $have" >&2
    exit 1
  fi
  printf '# %s %s\n## explicit\n' "$module" "$want" >>"$tmp/modules.txt"
done
for module in "${!direct[@]}" "${indirect[@]}"; do
  if [[ ! -d "$gocode/$module" ]]; then
    echo "error: $gocode/$module is missing: install Debian's package of $module" >&2
    exit 1
  fi
  mkdir -p "$tmp/$(dirname "$module")"
  ln -s "$gocode/$module" "$tmp/$module"
done
rm -rf vendor
mv "$tmp" vendor
trap - EXIT
echo "vendor/ links $(( ${#direct[@]} + ${#indirect[@]} )) modules from $gocode"
