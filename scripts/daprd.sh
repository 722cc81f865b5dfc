#!/usr/bin/env bash
# Builds Dapr's own binaries, unmodified, from Dapr's Go module (the module
# proxy; no Dapr CLI, no containers) and caches them by version. Prints the
# path of the cached directory, which holds `daprd`, `placement` and
# `scheduler`.
#
#   scripts/daprd.sh                 # the pinned version (DAPR_VERSION overrides)
#   DAPR_VERSION=v1.17.0 scripts/daprd.sh
#
# The cache is ~/.cache/dialback/dapr/<version> (DIALBACK_CACHE moves it).
# daprd is built with the `stablecomponents` tag: Dapr's stable components
# (in-memory and Redis pub/sub and state, the cron binding among them),
# without the alpha ones that would double the build.
set -euo pipefail

version="${DAPR_VERSION:-v1.18.1}"
cache="${DIALBACK_CACHE:-$HOME/.cache/dialback}/dapr/$version"
bins=(daprd placement scheduler)

ready=1
for b in "${bins[@]}"; do [ -x "$cache/$b" ] || ready=0; done
if [ "$ready" = 1 ]; then
  echo "$cache"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "scripts/daprd.sh: Go is not installed, so Dapr $version cannot be built; install Go 1.26 or newer (https://go.dev/dl/) and run again" >&2
  exit 2
fi

echo "scripts/daprd.sh: building Dapr $version from its Go module (once; cached in $cache)" >&2
# The module has replace directives, so `go install pkg@version` refuses it:
# build inside the module's own directory instead.
dir=$(go mod download -json "github.com/dapr/dapr@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [ -z "$dir" ] || [ ! -d "$dir" ]; then
  echo "scripts/daprd.sh: the Go module proxy did not give github.com/dapr/dapr@$version" >&2
  exit 1
fi
mkdir -p "$cache"
for b in "${bins[@]}"; do
  tags=""
  [ "$b" = daprd ] && tags="-tags=stablecomponents"
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath $tags -o "$cache/$b.tmp" "./cmd/$b") >&2
  mv "$cache/$b.tmp" "$cache/$b"
done
echo "$cache"
