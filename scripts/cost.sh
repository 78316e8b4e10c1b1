#!/usr/bin/env bash
# The cost report: CPU time per message of every process on the path (the
# gateway, the consumer, the broker and the load client), beside throughput
# and latency, on a fresh local broker for each series. CPU per message is
# read from /proc/PID/stat (utime + stime of all threads) before and after
# each series, so it does not depend on what else the machine is doing;
# throughput and latency do, and move ±30 % between runs on a busy 2-core box.
#
#   scripts/cost.sh [quick] [SERIES...]   quick: 10x smaller counts, for a smoke run;
#                                         SERIES: some of api api-per-request go-client consume publish e2e
#                                         (default: all)
#
# Series:
#   api      first 200 sequential POST /stream/start (server-chosen id) on
#            the idle gateway: p50 / p99 / max; then the seed's case: 1000
#            streams start, open their result WebSocket, then send 100,000
#            messages in all over HTTP (closed loop), every result awaited on
#            its WebSocket (`bench api`), with `consumer --workers 2`
#   api-per-request  the same with form bodies, each send on a new
#            connection that the client closes after the response
#   go-client  the same sends through Go's default HTTP client
#            (scripts/goload, when `go` is installed; results not read)
#   consume  300,000 preloaded events through `consumer --workers 2`
#            (CloudEvents results, at-least-once commits), then the same
#            records through librdkafka alone (read, write back with their
#            headers): the floor under the consumer's cost
#   publish  1,000,000 100-byte records from `publisher`, bare and with
#            CloudEvents headers
#   e2e      `bench e2e` produce -> consume latency at 1k and 10k events/s,
#            each rate on its own fresh broker
#
# Output: a table on stdout and in bench-results/cost/cost.log, the benches'
# JSON, .hgrm and SVG files beside it. The api series also splits the
# gateway's and the consumer's CPU by thread (/proc/PID/task/*/stat): Tokio's
# workers, librdkafka's threads, the consumer's group poll threads (and
# rdkafka's delivery-report thread in binaries built before 9995d0b, when
# the reports moved onto Tokio's workers), and gives both processes' peak
# RSS.
# Environment: PERF_PORT (19800) for the broker, COST_API_PORT (18283),
# COST_BIN (target/release, or under CARGO_TARGET_DIR; built first) to measure other binaries,
# COST_GATEWAY_ENV and COST_CONSUMER_ENV: NAME=VALUE words for the gateway's
# or the consumer's environment alone (api, api-per-request, go-client), e.g.
# COST_GATEWAY_ENV="KAFKA_PROPERTIES=fetch.min.bytes=16384 PRODUCER_LINGER=5ms".
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ALL_SERIES="api api-per-request go-client consume publish e2e"
# The header above, without its comment marks.
usage() { sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
case "${1:-}" in -h | --help | help) usage; exit 0 ;; esac
SCALE=1; [[ "${1:-}" == quick ]] && { SCALE=10; shift; }
# Every name checked before anything is built or started: a misspelt
# series would otherwise measure nothing, silently.
for s in "$@"; do
  [[ " $ALL_SERIES " == *" $s "* ]] || { echo "cost.sh: unknown series '$s' (choose from: quick, $ALL_SERIES; --help)" >&2; exit 2; }
done
SERIES="${*:-$ALL_SERIES}"
want() { [[ " $SERIES " == *" $1 "* ]]; }
API_MSGS=$((100000 / SCALE)); CONSUME=$((300000 / SCALE)); PUBLISH=$((1000000 / SCALE))
PORT="${PERF_PORT:-19800}"
API_PORT="${COST_API_PORT:-18283}"
OUT="$ROOT/bench-results/cost"
mkdir -p "$OUT"
exec > >(tee "$OUT/cost.log") 2>&1

export KAFKA_BROKERS="127.0.0.1:$PORT" BROKER_PORT="$PORT" BROKER_DIR="$ROOT/target/cost-broker"
export RUST_LOG=warn
B="${COST_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
TICK=$(getconf CLK_TCK)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  scripts/broker.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

die() { echo "cost.sh: $*" >&2; exit 1; }
# A broker of this run's own on PORT: one left there by something else
# would not be fresh, and its CPU would not be the one read.
fresh_broker() {
  scripts/broker.sh stop >/dev/null 2>&1 || true
  if (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; then
    die "port $PORT is in use by a process this script did not start; stop it or set PERF_PORT"
  fi
  scripts/broker.sh start >/dev/null
}
# Stops the run, with the end of NAME's log, if process PID has exited.
still_running() { kill -0 "$1" 2>/dev/null || { tail -n 5 "$OUT/$2.log" >&2; die "$2 exited (log: $OUT/$2.log)"; }; }
broker_pid() { cat "$BROKER_DIR/nisshi.pid"; }
# CPU seconds (user + system, all threads) a live process has used so far.
cpu() { awk -v t="$TICK" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / t }' "/proc/$1/stat"; }
# User and system CPU seconds of a live process so far: "user system".
cpu_split() { awk -v t="$TICK" '{ sub(/^.*\) /, ""); printf "%.2f %.2f\n", $12 / t, $13 / t }' "/proc/$1/stat"; }
# Peak resident memory of a live process so far, in MiB.
peak_rss() { awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
# Runs a command in the foreground; prints its output, then "cpu=S" with the
# CPU seconds it and its children used.
run_timed() {
  echo "\$ $*" >&2
  ( "$@"; times ) 2>&1 | awk '
    /^[0-9]+m[0-9.]+s [0-9]+m[0-9.]+s$/ { n++; if (n == 2) { split($1, u, /[ms]/); split($2, s, /[ms]/); cpu = u[1]*60 + u[2] + s[1]*60 + s[2] }; next }
    { print }
    END { printf "cpu=%.2f\n", cpu }'
}
# CPU ticks so far of each live thread of a process: "tid group ticks" per
# line. The group says what the thread is: Tokio's workers, librdkafka's
# own threads (rdk:*), rdkafka's delivery-report polling thread (older
# builds only), the consumer's group poll threads, or other.
thread_ticks() {
  awk '{
    rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " ")
    comm = substr($0, index($0, "(") + 1); comm = substr(comm, 1, length(comm) - length(rest) - 2)
    g = "other"
    if (comm ~ /^tokio-rt-worker/) g = "runtime"; else if (comm ~ /^rdk:/) g = "librdkafka"
    else if (comm ~ /^producer poll/) g = "delivery-thread"; else if (comm ~ /^consumer-worker/) g = "group-poll"
    split(FILENAME, p, "/"); print p[5], g, f[12] + f[13]
  }' /proc/"$1"/task/*/stat 2>/dev/null
}
# Where a process's CPU per message went between two thread_ticks
# snapshots: µs per message by group; "rest" is the process total (whose
# CPU seconds are given) minus the groups, which includes exited threads.
# The kernel scales each thread's and the process's user/system split on
# its own, so the two can differ by a few ticks: rest is floored at 0.
by_thread() {
  awk -v t="$TICK" -v n="$3" -v total="$4" '
    NR == FNR { before[$1] = $3; next }
    { d[$2] += $3 - before[$1]; sum += $3 - before[$1] }
    END {
      split("runtime librdkafka delivery-thread group-poll other", order, " ")
      for (i = 1; i <= 5; i++) if (order[i] in d) printf "%s %.1f, ", order[i], d[order[i]] * 1e6 / t / n
      rest = (total - sum / t) * 1e6 / n
      printf "rest %.1f\n", rest < 0 ? 0 : rest
    }' "$1" "$2"
}
# µs per message from a CPU-seconds delta.
per() { awk -v c="$1" -v n="$2" 'BEGIN { printf "%.1f", c * 1e6 / n }'; }
rows=()
row() { rows+=("$(printf '%-44s %12s' "$1" "$2")"); echo "-> $1: $2"; }

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr); load $(cut -d' ' -f1-3 /proc/loadavg)"
scripts/setup.sh >/dev/null
[[ -n "${COST_BIN:-}" ]] || cargo build --release --quiet -p publisher -p bench -p consumer -p producer-api --examples --bins

# A fresh broker, the gateway and `consumer --workers 2`, ready.
start_stack() {
fresh_broker
API_KEYS=cost-key,start-key LISTEN_ADDR="127.0.0.1:$API_PORT" env ${COST_GATEWAY_ENV:-} "$B/producer-api" >"$OUT/producer-api.log" 2>&1 &
gateway=$!; pids+=("$gateway")
RUST_LOG=info env ${COST_CONSUMER_ENV:-} "$B/consumer" --workers 2 --create-topics >"$OUT/consumer.log" 2>&1 &
consumer=$!; pids+=("$consumer")
local ready=
for _ in $(seq 1 600); do
  still_running "$gateway" producer-api; still_running "$consumer" consumer
  curl -fsS -o /dev/null "http://127.0.0.1:$API_PORT/readyz" 2>/dev/null && grep -q "partitions assigned" "$OUT/consumer.log" && { ready=1; break; }
  sleep 0.1
done
[[ -n $ready ]] || die "the gateway or the consumer was not ready within 60 s (logs: $OUT/producer-api.log, $OUT/consumer.log)"
}
stop_stack() {
kill "$gateway" "$consumer" 2>/dev/null || true; wait "$gateway" "$consumer" 2>/dev/null || true
pids=()
}
# CPU of the three processes before a load (g0 c0 k0 gu0 gs0) ...
cpu_before() { g0=$(cpu "$gateway"); c0=$(cpu "$consumer"); k0=$(cpu "$(broker_pid)"); read -r gu0 gs0 < <(cpu_split "$gateway"); }
# ... and after it (g1 c1 k1 gu1 gs1).
cpu_after() { g1=$(cpu "$gateway"); c1=$(cpu "$consumer"); k1=$(cpu "$(broker_pid)"); read -r gu1 gs1 < <(cpu_split "$gateway"); }
# The rows of CPU per message every API series reports, under LABEL.
cpu_rows() {
row "$1: gateway CPU per message (µs)" "$(per "$(echo "$g1 - $g0" | bc)" "$API_MSGS")"
row "$1: gateway CPU user / system (µs)" "$(per "$(echo "$gu1 - $gu0" | bc)" "$API_MSGS") / $(per "$(echo "$gs1 - $gs0" | bc)" "$API_MSGS")"
row "$1: consumer CPU per event (µs)" "$(per "$(echo "$c1 - $c0" | bc)" "$API_MSGS")"
row "$1: broker CPU per message (µs)" "$(per "$(echo "$k1 - $k0" | bc)" "$API_MSGS")"
}

# The seed's API case: LABEL for the rows, then bench api's extra flags.
api_series() {
local label=$1; shift
echo; echo "== $label: 1000 streams, $API_MSGS messages over HTTP, results on WebSockets ${*:+($*)}"
start_stack

if [[ $label == api ]]; then
# Stream start on the idle gateway, one after another (with a key of its
# own, so the load below still has its whole stream quota).
starts="$OUT/start-times.txt"; : >"$starts"
for _ in $(seq 1 200); do
  curl -sS -o /dev/null -w '%{time_total}\n' -X POST -H 'X-API-Key: start-key' "http://127.0.0.1:$API_PORT/stream/start" >>"$starts"
done
read -r p50 p99 pmax < <(sort -n "$starts" | awk '{ v[NR] = $1 * 1000 } END { printf "%.1f %.1f %.1f\n", v[int(NR*0.5)], v[int(NR*0.99)], v[NR] }')
row "POST /stream/start p50 / p99 / max (ms)" "$p50 / $p99 / $pmax"
fi

cpu_before
thread_ticks "$gateway" >"$OUT/gateway-threads.0"; thread_ticks "$consumer" >"$OUT/consumer-threads.0"
api_out=$(run_timed "$B/bench" api --url "http://127.0.0.1:$API_PORT" --api-key cost-key --streams 1000 --messages "$API_MSGS" --out-dir "$OUT/$label" "$@")
echo "$api_out"
# Threads are read after the process totals at the start and before them
# at the end, so the totals cover at least what the threads used.
thread_ticks "$gateway" >"$OUT/gateway-threads.1"; thread_ticks "$consumer" >"$OUT/consumer-threads.1"
cpu_after
client=$(sed -n 's/^cpu=//p' <<<"$api_out")
cpu_rows "$label"
row "$label: gateway CPU by thread (µs)" "$(by_thread "$OUT/gateway-threads.0" "$OUT/gateway-threads.1" "$API_MSGS" "$(echo "$g1 - $g0" | bc)")"
row "$label: consumer CPU by thread (µs)" "$(by_thread "$OUT/consumer-threads.0" "$OUT/consumer-threads.1" "$API_MSGS" "$(echo "$c1 - $c0" | bc)")"
row "$label: load client (bench) CPU per message (µs)" "$(per "$client" "$API_MSGS")"
row "$label: requests/s" "$(awk '$1 == "request" { print $3 }' <<<"$api_out" | head -1)"
row "$label: request p50 / p99 (ms)" "$(awk '$1 == "request" { print $4 " / " $8 }' <<<"$api_out" | head -1)"
row "$label: end-to-end p50 / p99 (ms)" "$(awk '$1 == "end-to-end" { print $4 " / " $8 }' <<<"$api_out" | head -1)"
row "$label: gateway / consumer peak RSS (MiB)" "$(peak_rss "$gateway") / $(peak_rss "$consumer")"
stop_stack
}

want api && api_series api
# The same with form bodies, each send on a connection of its own (a client
# without a connection pool, or Go's default transport under this load).
want api-per-request && api_series api-per-request --body form --connections per-request

# The sends of the seed's case through Go's default HTTP client
# (scripts/goload; results are not read), when Go is installed.
if want go-client; then
if command -v go >/dev/null; then
  echo; echo "== go-client: 1000 streams, $API_MSGS form sends through Go's default HTTP client"
  (cd scripts/goload && go build -o "$OUT/goload" .)
  start_stack
  cpu_before
  go_out=$(run_timed "$OUT/goload" -url "http://127.0.0.1:$API_PORT" -key cost-key -streams 1000 -messages "$API_MSGS")
  echo "$go_out"
  cpu_after
  cpu_rows go-client
  row "go-client: load client CPU per message (µs)" "$(per "$(sed -n 's/^cpu=//p' <<<"$go_out")" "$API_MSGS")"
  row "go-client: msg/s" "$(sed -n 's/^sends: .*(\([0-9]*\) msg\/s).*/\1/p' <<<"$go_out")"
  row "go-client: connections dialed / sends on a reused one" "$(sed -n 's/^sends: .*; \([0-9]*\) connections dialed, \([0-9]*\) requests.*/\1 \/ \2/p' <<<"$go_out")"
  stop_stack
else
  echo; echo "== go-client: skipped, no go on PATH (apt install golang-go)"
fi
fi

if want consume; then
echo; echo "== consume: $CONSUME events, 2 workers, CloudEvents results"
fresh_broker
run_timed "$B/examples/throughput" preload --topic cost --count "$CONSUME" >/dev/null
k0=$(cpu "$(broker_pid)")
out=$(run_timed "$B/examples/throughput" consumer --topic cost --results-topic cost.results --dlq-topic cost.dlq --create-topics --workers 2)
echo "$out"
k1=$(cpu "$(broker_pid)")
row "consume: consumer CPU per event (µs)" "$(per "$(sed -n 's/^cpu=//p' <<<"$out")" "$CONSUME")"
row "consume: broker CPU per event (µs)" "$(per "$(echo "$k1 - $k0" | bc)" "$CONSUME")"
row "consume: events/s" "$(grep -o '[0-9]* events/s' <<<"$out" | head -1)"
# The floor: librdkafka alone reading each record and writing it back with
# its key and CloudEvents headers, no processing, no ordering, no commits.
out=$(run_timed "$B/examples/throughput" pipe --topic cost --results-topic cost.pipe)
echo "$out"
row "consume floor (librdkafka pipe) CPU per event (µs)" "$(per "$(sed -n 's/^cpu=//p' <<<"$out")" "$CONSUME")"
fi

if want publish; then
echo; echo "== publish: $PUBLISH records of 100 bytes"
fresh_broker
for mode in bare ce; do
  flags=(--keys 1000); [[ $mode == bare ]] && flags=(--keys 0 --no-headers)
  k0=$(cpu "$(broker_pid)")
  out=$(run_timed "$B/publisher" --count "$PUBLISH" --size 100 "${flags[@]}" --topic "cost-pub-$mode" 2>&1 || true)
  echo "$out" | tail -n 12
  k1=$(cpu "$(broker_pid)")
  row "publish ($mode): publisher CPU per message (µs)" "$(per "$(sed -n 's/^cpu=//p' <<<"$out")" "$PUBLISH")"
  row "publish ($mode): broker CPU per message (µs)" "$(per "$(echo "$k1 - $k0" | bc)" "$PUBLISH")"
  row "publish ($mode): msg/s" "$(grep -oE '[0-9.,]+k? msg/s' <<<"$out" | head -1)"
done
fi

if want e2e; then
echo; echo "== e2e: produce -> consume latency"
# A fresh broker per rate: Nisshi's memory storage slows as its log grows,
# so a rate run after another would also measure the first one's records.
for rate in 1000 10000; do
  fresh_broker
  out=$(run_timed "$B/bench" e2e --rates "$rate" --warmup 5s --duration 20s --out-dir "$OUT/e2e-$rate")
  echo "$out"
  row "e2e at $rate/s: p50 / p99 (ms)" "$(awk -v r="@$rate/s" '$1 == r { print $4 " / " $8 }' <<<"$out")"
done
fi

echo; echo "== cost report ($(nproc) cores, $(date -u +%Y-%m-%d))"
printf '%s\n' "${rows[@]}"
