#!/usr/bin/env bash
# Soak test (not CI): a steady rate through producer-api -> consumer ->
# WebSocket for DURATION seconds (default 600), reporting the gateway's and
# the consumer's RSS and open file descriptors, and the end-to-end p99
# (send -> result frame on the stream's WebSocket), in a first and a last
# measuring window. A leak shows as RSS or fds growing between the two.
#
#   KAFKA_BROKERS=127.0.0.1:19092 scripts/soak.sh
#   RATE=500 STREAMS=50 DURATION=600 WINDOW=60 PROFILE=release scripts/soak.sh
#
# Needs a running broker (scripts/broker.sh start). Builds the three
# binaries (release by default; PROFILE=debug for a quick try).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

: "${KAFKA_BROKERS:?set KAFKA_BROKERS to a running broker (scripts/broker.sh start)}"
RATE="${RATE:-500}"          # events per second over all streams
STREAMS="${STREAMS:-50}"     # concurrent streams, one WebSocket each
DURATION="${DURATION:-600}"  # seconds of load in all
WINDOW="${WINDOW:-60}"       # seconds of the first and the last window
PROFILE="${PROFILE:-release}"
KEY="soak-$RANDOM$RANDOM"

if [[ "$PROFILE" == release ]]; then
    cargo build --release --quiet -p producer-api -p consumer -p bench
else
    cargo build --quiet -p producer-api -p consumer -p bench
fi
bin="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"
work="$(mktemp -d -t soak.XXXXXX)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
tag="soak-$(date +%s)"
export KAFKA_BROKERS EVENTS_TOPIC="$tag.events" RESULTS_TOPIC="$tag.results" DLQ_TOPIC="$tag.dlq"
export STREAMS_TOPIC="$tag.streams" TOPIC_PARTITIONS=6

"$bin/consumer" --workers 2 --create-topics >"$work/consumer.log" 2>&1 &
consumer=$!
API_KEYS="$KEY" LISTEN_ADDR="127.0.0.1:$port" "$bin/producer-api" >"$work/producer-api.log" 2>&1 &
api=$!
trap 'kill $api $consumer 2>/dev/null; wait $api $consumer 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 "$api" 2>/dev/null || { cat "$work/producer-api.log" >&2; exit 1; }
    sleep 0.2
done

sample() { # name pid -> "RSS_KiB fds"
    local rss fds
    rss="$(awk '/^VmRSS/ {print $2}' "/proc/$2/status")"
    fds="$(ls "/proc/$2/fd" | wc -l)"
    echo "$1 rss_kib=$rss fds=$fds"
}

# bench api: STREAMS streams, a fixed number of messages at RATE; prints the
# p99 of send -> result on the WebSocket. Its streams are deleted at the end.
window() { # name seconds
    local out="$work/$1.json"
    "$bin/bench" api --json --url "http://127.0.0.1:$port" --api-key "$KEY" \
        --streams "$STREAMS" --messages "$((RATE * $2))" --rate "$RATE" --size 100 \
        >"$out" 2>>"$work/bench.log"
    python3 - "$out" "$1" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
for row in report["rows"]:
    l = row["latency"]
    print(f'{sys.argv[2]} {row["name"]}: {l["count"]} results at {row["rate"]:.0f}/s, '
          f'p50 {l["p50_ms"]:.1f} ms, p99 {l["p99_ms"]:.1f} ms, max {l["max_ms"]:.1f} ms, errors {row["errors"]}')
PY
}

middle=$((DURATION - 2 * WINDOW))
(( middle >= 0 )) || { echo "DURATION must be at least 2 * WINDOW" >&2; exit 1; }
echo "soak: $RATE events/s over $STREAMS streams for ${DURATION}s ($PROFILE build; logs in $work)"
sample "before: producer-api" "$api"; sample "before: consumer" "$consumer"
window start "$WINDOW"
sample "start:  producer-api" "$api"; sample "start:  consumer" "$consumer"
(( middle > 0 )) && window middle "$middle" >/dev/null
window end "$WINDOW"
sample "end:    producer-api" "$api"; sample "end:    consumer" "$consumer"
