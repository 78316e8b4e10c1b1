#!/usr/bin/env bash
# The README's Performance numbers in one run: a fresh local broker per
# series, release builds, and every measurement with the exact command.
#
#   scripts/perf.sh [quick]      quick: 10x smaller counts, for a smoke run
#   scripts/perf.sh cost [...]   the cost report instead: scripts/cost.sh [...]
#
# Output: the log on stdout and in bench-results/perf/perf.log, plus each
# bench's JSON, .hgrm and SVG files in bench-results/perf/.
# Environment: PERF_PORT (19800), the broker port used for the series.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[[ "${1:-}" == cost ]] && { shift; exec scripts/cost.sh "$@"; }
SCALE=1; [[ "${1:-}" == quick ]] && SCALE=10
N=$((1000000 / SCALE)); N1K=$((300000 / SCALE)); API_MSGS=$((100000 / SCALE))
PORT="${PERF_PORT:-19800}"
OUT="$ROOT/bench-results/perf"
mkdir -p "$OUT"
exec > >(tee "$OUT/perf.log") 2>&1

export KAFKA_BROKERS="127.0.0.1:$PORT" BROKER_PORT="$PORT" BROKER_DIR="$ROOT/target/perf-broker"
export RUST_LOG=warn
fresh_broker() { scripts/broker.sh stop >/dev/null 2>&1 || true; scripts/broker.sh start >/dev/null; }
run() { echo; echo "\$ $*"; "$@"; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; scripts/broker.sh stop >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr); load $(cut -d' ' -f1-3 /proc/loadavg)"
scripts/setup.sh
cargo build --release --quiet -p publisher -p bench -p consumer -p producer-api --examples --bins
B="${CARGO_TARGET_DIR:-$ROOT/target}/release"

echo; echo "== producer ceiling and publisher, 100-byte records"
fresh_broker
run scripts/rdkafka-perf.sh --count "$N" --size 100 --topic ceiling-100 2>&1 | grep -E "messages produced|delivered" | tail -1
run "$B/publisher" --count "$N" --size 100 --keys 0 --no-headers --topic pub-bare-100
run "$B/publisher" --count "$N" --size 100 --keys 1000 --topic pub-ce-100

echo; echo "== producer ceiling and publisher, 1 KB records"
fresh_broker
run scripts/rdkafka-perf.sh --count "$N1K" --size 1024 --topic ceiling-1k 2>&1 | grep -E "messages produced|delivered" | tail -1
run "$B/publisher" --count "$N1K" --size 1024 --keys 0 --no-headers --topic pub-bare-1k
run "$B/publisher" --count "$N1K" --size 1024 --keys 1000 --topic pub-ce-1k

echo; echo "== consumer: events/s into results with at-least-once commits, against a bare librdkafka read"
fresh_broker
run "$B/examples/throughput" preload --topic cbench --count "$N"
run "$B/examples/throughput" bare --topic cbench
for w in 1 2 4; do
  run "$B/examples/throughput" consumer --topic cbench --results-topic "cbench.results.$w" --dlq-topic cbench.dlq --create-topics --workers "$w"
done
# The same with results as bare JSON records (no CloudEvents headers): how
# much of the consumer's rate the broker's cost of headers takes.
run "$B/examples/throughput" consumer --topic cbench --results-topic cbench.results.bare --dlq-topic cbench.dlq --create-topics --workers 2 --result-headers false

echo; echo "== end-to-end latency against offered rate (produce -> consume)"
fresh_broker
run "$B/bench" e2e --rates 1000,10000,50000 --warmup 5s --duration 20s --out-dir "$OUT"

echo; echo "== the seed's case: 1000 streams, $API_MSGS messages through producer-api, results on WebSockets"
fresh_broker
API_KEYS=perf-key LISTEN_ADDR=127.0.0.1:18282 "$B/producer-api" >"$OUT/producer-api.log" 2>&1 &
pids+=($!)
RUST_LOG=info "$B/consumer" --workers 2 --create-topics >"$OUT/consumer.log" 2>&1 &
pids+=($!)
# Start measuring once the gateway is ready and the consumer group has its
# partitions, so a group join is not counted as end-to-end latency.
for _ in $(seq 1 600); do
  curl -fsS -o /dev/null http://127.0.0.1:18282/readyz 2>/dev/null && grep -q "partitions assigned" "$OUT/consumer.log" && break
  sleep 0.1
done
run "$B/bench" api --url http://127.0.0.1:18282 --api-key perf-key --streams 1000 --messages "$API_MSGS" --out-dir "$OUT"
run "$B/bench" api --url http://127.0.0.1:18282 --api-key perf-key --streams 1000 --messages "$API_MSGS" --via ws --out-dir "$OUT/ws"
echo; echo "== done; load $(cut -d' ' -f1-3 /proc/loadavg)"
