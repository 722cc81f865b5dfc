#!/usr/bin/env bash
# Provides Prometheus' promtool (its `check metrics` validates an
# exposition) from Debian's `prometheus` package, without installing the
# package: `apt-get download` fetches the .deb (no root needed) and only
# promtool is unpacked, so no Prometheus server is installed or started.
# Cached under ~/.cache/dialback/promtool (DIALBACK_CACHE moves it); prints
# the binary's path. A promtool already on PATH is used as it is.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  command -v promtool
  exit 0
fi
cache="${DIALBACK_CACHE:-$HOME/.cache/dialback}/promtool"
if [ -x "$cache/promtool" ]; then
  echo "$cache/promtool"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
  echo "scripts/promtool.sh: needs apt-get and dpkg-deb (Debian) to fetch promtool from the prometheus package; or put promtool on PATH" >&2
  exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
if ! apt-get download prometheus >/dev/null 2>"$tmp/err"; then
  # The package lists may be missing or old on a fresh machine.
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null 2>&1 || true
  if ! apt-get download prometheus >/dev/null 2>"$tmp/err"; then
    echo "scripts/promtool.sh: apt-get download prometheus failed: $(tail -1 "$tmp/err")" >&2
    exit 2
  fi
fi
dpkg-deb -x prometheus_*.deb x
mkdir -p "$cache"
install -m 0755 x/usr/bin/promtool "$cache/promtool.tmp"
mv "$cache/promtool.tmp" "$cache/promtool"
echo "$cache/promtool"
