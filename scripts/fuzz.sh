#!/usr/bin/env bash
# Fuzz dbrag-core's parsers of untrusted input (tokens, ciphertexts, model
# answers, conninfo, prompt input, guard name lists, JWKS documents) with libFuzzer, for a
# bounded time per target. Runs on the stable toolchain without cargo-fuzz:
# the targets in crates/dbrag-core/fuzz are built with the coverage flags
# cargo-fuzz passes (sanitizer-coverage, debug assertions, overflow checks),
# but without AddressSanitizer, which needs nightly (dbrag-core is safe
# Rust: what a fuzzer can find there is a panic, an overflow, a hang or a
# blow-up, and all of those abort the run). Where cargo-fuzz and a nightly
# toolchain are at hand, `cd crates/dbrag-core && cargo fuzz run jwt` runs
# the same targets (on stable: RUSTC_BOOTSTRAP=1 cargo +stable fuzz run jwt,
# with AddressSanitizer; too slow to build for CI's budget).
#
#   DBRAG_FUZZ_SECONDS=N   seconds per target (default 8; 8 targets)
#   DBRAG_FUZZ_TARGETS="jwt answer"   a subset
#
# The corpus kept in the repo (crates/dbrag-core/fuzz/corpus/<target>) is
# seed files only; what a run discovers goes to a temporary directory. A
# crash is saved under crates/dbrag-core/fuzz/artifacts/<target>/ and fails
# the run: turn it into a regression test in dbrag-core and fix the code.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

FUZZ=crates/dbrag-core/fuzz
SECONDS_PER_TARGET=${DBRAG_FUZZ_SECONDS:-8}
TARGETS=${DBRAG_FUZZ_TARGETS:-"jwt jwks envelope answer conninfo prompt sqlguard dialect frame"}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')

# The flags of cargo-fuzz's default build, less -Zsanitizer. An explicit
# --target keeps them off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
echo "fuzz: building targets"
cargo build --quiet --release --manifest-path "$FUZZ/Cargo.toml" --target "$TRIPLE" --bins

work=$(mktemp -d /tmp/dbrag_fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
status=0
for t in $TARGETS; do
    bin="$FUZZ/target/$TRIPLE/release/$t"
    mkdir -p "$work/$t" "$work/artifacts/$t"
    # First corpus directory is where new inputs go: the temporary one.
    if TMPDIR="$work" "$bin" "$work/$t" "$FUZZ/corpus/$t" -max_total_time="$SECONDS_PER_TARGET" \
        -artifact_prefix="$work/artifacts/$t/" -rss_limit_mb=2048 -timeout=10 \
        -max_len=65536 -print_final_stats=1 >"$work/$t.log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")
        cov=$(grep -o 'cov: [0-9]*' "$work/$t.log" | tail -1)
        echo "fuzz: $t: ${runs:-?} runs in ${SECONDS_PER_TARGET}s, $cov, no crash"
    else
        status=1
        echo "fuzz: $t FAILED"
        grep -v '^#' "$work/$t.log" | tail -n 40
        mkdir -p "$FUZZ/artifacts/$t"
        cp "$work/artifacts/$t/"* "$FUZZ/artifacts/$t/" 2>/dev/null || true
        echo "fuzz: the input is kept in $FUZZ/artifacts/$t/"
    fi
done
exit $status
