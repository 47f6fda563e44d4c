#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, integration, recovery and doc tests.
# Installs what it needs (today: only the Rust toolchain's components, already on the machine).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace --all-targets
echo "== doc tests"
cargo test --workspace --doc
