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
# Dapr's scheduler (jobs, actor reminders, workflows) is built too. v1.18.1
# needs github.com/diagridio/go-etcd-cron v0.12.5, which the module proxy
# refuses (403, "not available"); when that is why the build failed, the
# script builds it again with the nearest version the proxy serves
# ($cron_fallback) put in its place through a copy of Dapr's go.mod
# (`go build -modfile`; Dapr's module itself is untouched) and says so in
# `scheduler.note`. Where even that fails, `scheduler.failed` says why, the
# tests that need the scheduler fail naming it, and daprd and placement
# are there for the rest.
set -euo pipefail

version="${DAPR_VERSION:-v1.18.1}"
cache="${DIALBACK_CACHE:-$HOME/.cache/dialback}/dapr/$version"
cron_fallback="v0.12.3"
required=(daprd placement)

# daprd and placement built, and the scheduler built or known not to build.
ready() {
  for b in "${required[@]}"; do [ -x "$cache/$b" ] || return 1; done
  [ -x "$cache/scheduler" ] || [ -e "$cache/scheduler.failed" ]
}
if ready; then
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
if ready; then
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
# The scheduler with go-etcd-cron $1 in place of the version Dapr's go.mod names.
build_scheduler_with_cron() {
  local mod status=0
  mod=$(mktemp -d)
  cp "$dir/go.mod" "$dir/go.sum" "$mod/"
  chmod u+w "$mod/go.mod" "$mod/go.sum"
  echo "replace github.com/diagridio/go-etcd-cron => github.com/diagridio/go-etcd-cron $1" >>"$mod/go.mod"
  GOFLAGS=-mod=mod build scheduler "-modfile=$mod/go.mod" || status=$?
  rm -rf "$mod"
  return $status
}
if [ ! -x "$cache/daprd" ]; then
  build daprd -tags=stablecomponents
  mv "$cache/daprd.tmp" "$cache/daprd"
fi
if [ ! -x "$cache/placement" ]; then
  build placement ""
  mv "$cache/placement.tmp" "$cache/placement"
fi
if [ ! -x "$cache/scheduler" ]; then
  rm -f "$cache/scheduler.failed" "$cache/scheduler.unavailable" "$cache/scheduler.note"
  if build scheduler "" 2>"$cache/scheduler.log"; then
    mv "$cache/scheduler.tmp" "$cache/scheduler"
  elif grep -q "go-etcd-cron.*\(403\|not available\)" "$cache/scheduler.log" &&
    build_scheduler_with_cron "$cron_fallback" 2>>"$cache/scheduler.log"; then
    mv "$cache/scheduler.tmp" "$cache/scheduler"
    echo "built with github.com/diagridio/go-etcd-cron $cron_fallback: the module proxy refuses the version Dapr $version names" >"$cache/scheduler.note"
    echo "scripts/daprd.sh: $(cat "$cache/scheduler.note")" >&2
  else
    tail -n 3 "$cache/scheduler.log" >"$cache/scheduler.failed"
    echo "scripts/daprd.sh: Dapr's scheduler could not be built (see $cache/scheduler.failed); going on without it" >&2
  fi
fi
echo "$cache"
