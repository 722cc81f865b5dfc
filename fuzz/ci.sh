#!/usr/bin/env bash
# A short coverage-guided fuzz run of every target, for CI.
#
# Exits 0 with one line when nightly or cargo-fuzz is missing and cannot be
# installed, or when the targets do not build (nightly drift is not our
# bug); exits non-zero only when a target crashes (panic, failed
# assertion, timeout or out-of-memory), leaving the input in
# fuzz/artifacts/<target>/.
#
#   FUZZ_SECONDS     seconds per target (default 25)
#   FUZZ_TARGET_DIR  cargo target dir to reuse between runs (default fuzz/target)
set -uo pipefail

cd "$(dirname "$0")/.." || exit 0
seconds="${FUZZ_SECONDS:-25}"
targets=(hello statedir)

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: skipped: no nightly toolchain (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    if ! cargo install cargo-fuzz --locked >/tmp/cargo-fuzz-install.$$.log 2>&1; then
        echo "fuzz: skipped: cargo-fuzz is missing and could not be installed (see /tmp/cargo-fuzz-install.$$.log)"
        exit 0
    fi
fi

target_dir=()
if [[ -n "${FUZZ_TARGET_DIR:-}" ]]; then
    target_dir=(--target-dir "$FUZZ_TARGET_DIR")
fi
if ! cargo +nightly fuzz build "${target_dir[@]}" >/tmp/fuzz-build.$$.log 2>&1; then
    tail -n 20 /tmp/fuzz-build.$$.log
    echo "fuzz: skipped: the fuzz targets do not build on this nightly (not a crash; see /tmp/fuzz-build.$$.log)"
    exit 0
fi

failed=()
for t in "${targets[@]}"; do
    # New inputs go to a scratch corpus; the committed seeds are only read.
    scratch="$(mktemp -d)"
    log="$(mktemp)"
    if cargo +nightly fuzz run "${target_dir[@]}" "$t" "$scratch" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        done_line="$(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)"
        cov="$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1)"
        echo "fuzz: $t ok: ${done_line:-no summary} (${cov:-no coverage line})"
    else
        tail -n 40 "$log"
        echo "fuzz: $t CRASHED: reproducer in fuzz/artifacts/$t/"
        failed+=("$t")
    fi
    rm -rf "$scratch" "$log"
done

if ((${#failed[@]})); then
    echo "fuzz: crashes in: ${failed[*]}"
    exit 1
fi
