#!/usr/bin/env bash
# Installs the servers and tools the test suite runs against, each only when missing:
#   - tansu 0.6, a Kafka-protocol broker from crates.io (sqlite storage), built once into
#     $WEIR_TOOLS (default ~/.cache/weir-tools), outside the clone, and reused: a clean build
#     takes 7 to 25 minutes on 2 cores;
#   - Debian's mosquitto (MQTT 5 broker) and mosquitto-clients (the MQTT bench's baseline), with apt;
#   - kafka-python (pip), an independent Kafka client for one check.
# Prints the environment the tests read (WEIR_TANSU, WEIR_MOSQUITTO); scripts/test.sh exports it.
set -euo pipefail

tools=${WEIR_TOOLS:-$HOME/.cache/weir-tools}
mkdir -p "$tools"

tansu="$tools/tansu-0.6/bin/tansu"
if [ ! -x "$tansu" ]; then
    echo "== installing tansu 0.6 into $tools/tansu-0.6 (once; 7-25 minutes)" >&2
    # Its default features have no storage engine: libsql gives sqlite://.
    cargo install tansu --version '~0.6' --features libsql --locked --root "$tools/tansu-0.6" >&2
fi

if { ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; } || ! command -v mosquitto_sub >/dev/null 2>&1; then
    echo "== installing mosquitto (apt)" >&2
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >&2 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >&2
    else
        sudo apt-get update -qq >&2 || true
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >&2
    fi
fi
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)

# kafka-python: a Kafka client that is not librdkafka, for the independent
# check of the group offsets Weir commits (scripts/kafka_group_offsets.py).
if ! python3 -c 'import kafka' >/dev/null 2>&1; then
    echo "== installing kafka-python (pip)" >&2
    python3 -m pip install --quiet --disable-pip-version-check 'kafka-python>=2.0.2' >&2
fi

echo "WEIR_TANSU=$tansu"
echo "WEIR_MOSQUITTO=$mosquitto"
