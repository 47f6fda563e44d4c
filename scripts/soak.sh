#!/usr/bin/env bash
# Long torture run: SIGKILL the sensor example N times (default 500) at random
# moments, restarting each time with 1-4 workers, then compare the output with
# the reference exactly. Prints the seed; replay a failure with
#   WEIR_TORTURE_SEED=<seed> bash scripts/soak.sh N
set -euo pipefail
cd "$(dirname "$0")/.."
export WEIR_TORTURE_KILLS="${1:-500}"
# The test spawns the example's binary; `cargo test --test` alone would not (re)build it.
cargo build --example sensor_aggregation
exec cargo test --test recovery torture -- --nocapture
