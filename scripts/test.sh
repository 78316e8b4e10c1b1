#!/usr/bin/env bash
# The full test suite, from a fresh machine: installs prerequisites, starts
# the local broker (unless one already answers on KAFKA_BROKERS' port),
# checks formatting and lints, and runs every test against the real broker.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -p consumer`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/setup.sh
export BROKER_PORT="${BROKER_PORT:-19092}"
scripts/broker.sh start
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:$BROKER_PORT}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --no-fail-fast "$@"
