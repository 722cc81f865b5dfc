#!/usr/bin/env bash
# Where the reverse channel's cost goes: for each mode, holds one cost-bench
# cell (default: HTTP API, concurrency 1, 100 B) running and reads the
# sidecar's and the app's context switches and CPU per call over 5 s with `perf stat`
# (software events, so it works where hardware counters are not exposed),
# then records a flat `perf record` profile of each.
#
#   benches/profile.sh [api] [concurrency] [payload]     e.g. benches/profile.sh grpc 16 1048576
#
# Needs perf (Debian: linux-perf). Output: one line per process, and
# target/profile/<mode>-<sidecar|app>.data for `perf report -i`.
set -euo pipefail
cd "$(dirname "$0")/.."
api=${1:-http} conc=${2:-1} payload=${3:-100}
mkdir -p target/profile
CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_PROFILE_RELEASE_STRIP=none cargo bench -p dialback-benches --bench cost --no-run 2>/dev/null
for mode in classic tcp quic; do
  out=target/profile/hold-$mode.log
  CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_PROFILE_RELEASE_STRIP=none cargo bench -p dialback-benches --bench cost -- \
    --modes "$mode" --api "$api" --conc "$conc" --payload "$payload" --hold "$mode" >"$out" 2>&1 &
  bench=$!
  for _ in $(seq 300); do grep -q '^holding' "$out" 2>/dev/null && break; sleep 1; done
  line=$(grep '^holding' "$out") || { echo "$mode: the bench did not start; see $out"; kill $bench; exit 1; }
  sc=$(sed -E 's/.*sidecar pid ([0-9]+).*/\1/' <<<"$line")
  app=$(sed -E 's/.*app pid ([0-9]+).*/\1/' <<<"$line")
  sleep 2 # past the warm-up
  for who in sidecar app; do
    pid=$sc; [ "$who" = app ] && pid=$app
    stat=$(perf stat -x, -e context-switches,task-clock -p "$pid" -- sleep 5 2>&1 >/dev/null)
    cs=$(awk -F, '/context-switches/ {print $1}' <<<"$stat")
    ms=$(awk -F, '/task-clock/ {printf "%.0f", $1}' <<<"$stat")
    rate=$(grep '^held:' "$out" | tail -1 | awk '{print $2}')
    awk -v m="$mode" -v w="$who" -v cs="$cs" -v ms="$ms" -v r="${rate:-0}" 'BEGIN {
      n = r * 5; if (n < 1) n = 1
      printf "%-8s %-8s %6.0f calls/s  %5.1f context switches/call  %6.0f us CPU/call\n", m, w, r, cs / n, ms * 1000 / n }'
    perf record -q -e cpu-clock -F 2000 -o "target/profile/$mode-$who.data" -p "$pid" -- sleep 5 2>/dev/null || true
  done
  # SIGTERM to the bench itself (not cargo): it drops its pairs, killing their processes.
  pkill -TERM -f "deps/cost-.*--hold" || true
  wait $bench 2>/dev/null || true
done
echo "flat profiles: perf report -i target/profile/<mode>-<sidecar|app>.data --no-children --sort dso,symbol"
