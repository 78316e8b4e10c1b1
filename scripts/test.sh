#!/usr/bin/env bash
# The full test suite, from a fresh machine: installs prerequisites, starts
# the local broker (unless one already answers on KAFKA_BROKERS' port),
# checks formatting and lints, runs every test against the real broker, then
# schemathesis against producer-api's own OpenAPI document.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh -p consumer`) and
# skip schemathesis.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/setup.sh --browser
export BROKER_PORT="${BROKER_PORT:-19092}"
scripts/broker.sh start
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:$BROKER_PORT}"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

log="$(mktemp -t cargo-test.XXXXXX.log)"
status=0
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
schemathesis_failed=0
if [[ $# -eq 0 ]]; then
  scripts/schemathesis.sh || { status=1; schemathesis_failed=1; }
fi

# One closing line for the whole suite, summed over cargo's per-binary lines.
# A test binary that crashed (a signal, an abort) prints no "test result"
# line but cargo's "error: test failed": it counts as one failure, and so
# does a failed schemathesis run, so the line never reads "0 failed" for a
# red suite.
awk -v extra="$schemathesis_failed" -v status="$status" '
     /^     Running / { reported = 0 }
     /^test result:/ { reported = 1; for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^error: test failed/ { if (!reported) f += 1 }
     END { f += extra; if (status != 0 && f == 0) f = 1; printf "tests: %d passed, %d failed\n", p, f }' "$log"
# The full output stays only when something failed.
if [[ $status -eq 0 ]]; then rm -f "$log"; else echo "cargo test's output: $log"; fi
exit "$status"
