#!/usr/bin/env bash
# Scores every built-in detector on the Numenta Anomaly Benchmark with NAB's own scorer.
#
#   NAB_HOME=/path/to/NAB NAB_PYTHON=/path/to/venv/bin/python scripts/nab.sh
#
# Needs a checkout of numenta/NAB at $NAB_HOME (AGPL: keep it outside this repository; nothing of it is
# copied here), a Python for its scorer at $NAB_PYTHON (a venv with pandas==1.5.3 "numpy<2"
# simplejson==3.20.1) and the runner ../shared/tools/nab_score.py (or $NAB_SCORE). Builds the release
# `anomaly_scores` example, then prints one JSON line per detector from `--list-detectors`: its
# standard, reward_low_FP_rate and reward_low_FN_rate scores. Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${NAB_HOME:?set NAB_HOME to a numenta/NAB checkout}"
export NAB_HOME NAB_PYTHON="${NAB_PYTHON:-python3}"
score="${NAB_SCORE:-../shared/tools/nab_score.py}"
[ -f "$score" ] || { echo "no $score: set NAB_SCORE to nab_score.py" >&2; exit 1; }
cargo build --release --example anomaly_scores
bin="$PWD/target/release/examples/anomaly_scores"
for d in $("$bin" --list-detectors); do
    # NAB splits result names on '_': the name must not have one.
    python3 "$score" --name "weir${d}" --cmd "$bin --input {input} --detector $d --output {output}" \
        --jobs "${NAB_JOBS:-2}" | tail -n 1
done
