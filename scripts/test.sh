#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, integration, recovery and doc tests.
# Installs what it needs: the Rust toolchain's components, and the servers the tests run
# against (scripts/tools.sh: tansu, a Kafka-protocol broker built once into ~/.cache/weir-tools;
# Debian's mosquitto).
#
#   bash scripts/test.sh           the suite (the fuzz corpus is replayed by tests/fuzz_corpus.rs)
#   bash scripts/test.sh --long    the suite, then each fuzz target for FUZZ_SECONDS (default 60)
#                                  on the nightly toolchain (installs cargo-fuzz when missing)
set -euo pipefail
cd "$(dirname "$0")/.."

long=false
for arg in "$@"; do
    case "$arg" in
        --long) long=true ;;
        *) echo "usage: $0 [--long]" >&2; exit 2 ;;
    esac
done

if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi
# The servers, each installed once; the tests start their own on 127.0.0.1.
tools_env=$(bash scripts/tools.sh)
while IFS='=' read -r key value; do export "$key=$value"; done <<< "$tools_env"

log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo build --examples (the tests spawn the example binaries; cargo test does not build them)"
cargo build --workspace --examples
echo "== cargo test (unit, integration, recovery)"
# --no-fail-fast: one run shows every failing test binary, not just the first.
cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee -a "$log"
echo "== doc tests"
cargo test --workspace --doc 2>&1 | tee -a "$log"

# One closing line for the whole suite.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f; exit (f > 0) }' "$log"

if $long; then
    if ! cargo fuzz --version >/dev/null 2>&1; then cargo install cargo-fuzz --locked; fi
    seconds=${FUZZ_SECONDS:-60}
    # New inputs go to a scratch directory: the committed corpus stays a small seed set.
    scratch=$(mktemp -d)
    trap 'rm -f "$log"; rm -rf "$scratch"' EXIT
    for target in $(cd fuzz && cargo +nightly fuzz list); do
        echo "== fuzz $target (${seconds}s)"
        mkdir -p "$scratch/$target"
        (cd fuzz && cargo +nightly fuzz run -O "$target" "$scratch/$target" "corpus/$target" -- \
            -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -max_len=65536 -print_final_stats=1)
    done
fi
