#!/usr/bin/env bash
# The main job on one machine: the local broker, the consumer (2 workers) and
# the producer-api, then a walk-through that opens a stream, sends an event and
# shows its processed result arriving on the stream's WebSocket.
#
#   scripts/demo.sh            run until Ctrl-C
#   scripts/demo.sh --check    run the walk-through once, then stop (exit 1 if it fails)
#
# Environment: API_KEYS (default demo-key), LISTEN_ADDR (127.0.0.1:8082),
# KAFKA_BROKERS (127.0.0.1:19092, started here when nothing answers there).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CHECK=0; [[ "${1:-}" == "--check" ]] && CHECK=1

export API_KEYS="${API_KEYS:-demo-key}"
export LISTEN_ADDR="${LISTEN_ADDR:-127.0.0.1:8082}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:19092}"
export METRICS_ADDR="${METRICS_ADDR:-127.0.0.1:9464}"
KEY="${API_KEYS%%,*}"
API="http://$LISTEN_ADDR"
LOGS="$ROOT/target/demo"
mkdir -p "$LOGS"

scripts/setup.sh --no-broker
# On a fresh machine the local broker is compiled from crates.io: that
# build and ours run side by side, so the cores stay busy through each
# one's single-threaded stretches (build scripts, linking).
scripts/broker.sh install >"$LOGS/broker-install.log" 2>&1 &
install=$!
echo "demo: building consumer and producer-api (the first build takes a few minutes)" >&2
cargo build --quiet -p consumer -p producer-api
wait "$install" || { tail -n 30 "$LOGS/broker-install.log" >&2; echo "demo: installing the local broker failed" >&2; exit 1; }
BROKER_PORT="${KAFKA_BROKERS##*:}" scripts/broker.sh start

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Where cargo put them: CARGO_TARGET_DIR when the user sets one.
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug"
RUST_LOG="${RUST_LOG:-info}" "$BIN/consumer" --workers 2 --create-topics >"$LOGS/consumer.log" 2>&1 &
pids+=($!)
"$BIN/producer-api" >"$LOGS/producer-api.log" 2>&1 &
pids+=($!)

wait_for() { # name url
  for _ in $(seq 1 600); do
    curl -fsS -o /dev/null "$2" 2>/dev/null && return 0
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { tail -n 20 "$LOGS"/*.log >&2; echo "demo: a service exited (logs above, in $LOGS)" >&2; exit 1; }
    done
    sleep 0.1
  done
  echo "demo: $1 not ready at $2 after 60 s (logs in $LOGS)" >&2; exit 1
}
wait_for consumer "http://$METRICS_ADDR/metrics"
wait_for producer-api "$API/readyz"
# The first result would otherwise include the consumer group's join.
for _ in $(seq 1 300); do grep -q "partitions assigned" "$LOGS/consumer.log" && break; sleep 0.1; done

echo
echo "== walk-through ================================================================"
STREAM=$(curl -fsS -X POST "$API/stream/start" -H "X-API-Key: $KEY" | python3 -c 'import json,sys; print(json.load(sys.stdin)["stream_id"])')
echo "started stream $STREAM"
rm -f "$LOGS/ws.ready"
python3 scripts/ws.py "ws://$LISTEN_ADDR/stream/$STREAM/results" -H "X-API-Key: $KEY" --count 1 \
  --ready-file "$LOGS/ws.ready" >"$LOGS/ws.out" &
WATCH=$!
for _ in $(seq 1 100); do [[ -e "$LOGS/ws.ready" ]] && break; sleep 0.1; done
[[ -e "$LOGS/ws.ready" ]] || { echo "demo: the WebSocket did not open (logs in $LOGS)" >&2; exit 1; }
echo "sending {\"data\": \"hello, stream\"}:"
curl -fsS -X POST "$API/stream/$STREAM/send" -H "X-API-Key: $KEY" -H 'content-type: application/json' \
  -d '{"data": "hello, stream"}'
echo
ok=0
for _ in $(seq 1 300); do
  if ! kill -0 "$WATCH" 2>/dev/null; then ok=1; break; fi
  sleep 0.1
done
if [[ $ok == 1 && -s "$LOGS/ws.out" ]]; then
  echo "result pushed on the WebSocket:"
  cat "$LOGS/ws.out"
else
  kill "$WATCH" 2>/dev/null || true
  echo "demo: no result arrived within 30 s (logs in $LOGS)" >&2
  exit 1
fi
[[ $CHECK == 1 ]] && { echo "demo: walk-through passed"; exit 0; }

cat <<TXT

== try it yourself (services keep running until Ctrl-C; logs in $LOGS) ===========
# open a stream
curl -s -X POST $API/stream/start -H 'X-API-Key: $KEY'
# watch its results (WebSocket; or: curl -N -H 'Accept: text/event-stream' -H 'X-API-Key: $KEY' $API/stream/$STREAM/results)
python3 scripts/ws.py ws://$LISTEN_ADDR/stream/$STREAM/results -H 'X-API-Key: $KEY'
# in another terminal, send events to it
curl -s -X POST $API/stream/$STREAM/send -H 'X-API-Key: $KEY' -H 'content-type: application/json' -d '{"data": {"temperature": 21.5}}'
# or publish without a stream
curl -s -X POST $API/publish -H 'X-API-Key: $KEY' -H 'content-type: application/json' -d '{"message": "Hello, Kafka!"}'
TXT
wait
