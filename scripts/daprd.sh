#!/usr/bin/env bash
# Builds Dapr's own binaries, unmodified, from Dapr's Go module (the module
# proxy; no Dapr CLI, no containers) and caches them by version. Prints the
# path of the cached directory, which holds `daprd` and `placement`.
#
#   scripts/daprd.sh                 # the pinned version (DAPR_VERSION overrides)
#   DAPR_VERSION=v1.17.0 scripts/daprd.sh
#
# The cache is ~/.cache/dialback/dapr/<version> (DIALBACK_CACHE moves it).
# daprd is built with the `stablecomponents` tag: Dapr's stable components
# (in-memory and Redis pub/sub and state, the cron binding among them),
# without the alpha ones that would double the build. The first build
# downloads Dapr's dependencies and compiles for a while (about 13 minutes
# of CPU on 2 cores); later calls print the path at once.
#
# Dapr's scheduler (jobs, actor reminders) is tried too, but v1.18.1 needs
# github.com/diagridio/go-etcd-cron v0.12.5, which the module proxy refuses
# (403); where it cannot be built, `scheduler.unavailable` says why and the
# script goes on without it.
set -euo pipefail

version="${DAPR_VERSION:-v1.18.1}"
cache="${DIALBACK_CACHE:-$HOME/.cache/dialback}/dapr/$version"
required=(daprd placement)

ready=1
for b in "${required[@]}"; do [ -x "$cache/$b" ] || ready=0; done
if [ "$ready" = 1 ]; then
  echo "$cache"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "scripts/daprd.sh: Go is not installed, so Dapr $version cannot be built; install Go 1.26 or newer (https://go.dev/dl/) and run again" >&2
  exit 2
fi

# One build at a time (test binaries may ask at once); the second waits and finds it done.
mkdir -p "$(dirname "$cache")"
exec 9>"$cache.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi
ready=1
for b in "${required[@]}"; do [ -x "$cache/$b" ] || ready=0; done
if [ "$ready" = 1 ]; then
  echo "$cache"
  exit 0
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
ldflags="-X github.com/dapr/dapr/pkg/buildinfo.version=${version#v}"
build() {
  local b=$1 tags=$2
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath $tags -ldflags "$ldflags" -o "$cache/$b.tmp" "./cmd/$b") >&2
}
build daprd -tags=stablecomponents
mv "$cache/daprd.tmp" "$cache/daprd"
build placement ""
mv "$cache/placement.tmp" "$cache/placement"
if [ ! -e "$cache/scheduler" ] && [ ! -e "$cache/scheduler.unavailable" ]; then
  if build scheduler "" 2>"$cache/scheduler.log"; then
    mv "$cache/scheduler.tmp" "$cache/scheduler"
  else
    tail -n 3 "$cache/scheduler.log" >"$cache/scheduler.unavailable"
    echo "scripts/daprd.sh: Dapr's scheduler could not be built (see $cache/scheduler.unavailable); going on without it" >&2
  fi
fi
echo "$cache"
