#!/usr/bin/env bash
# librdkafka's own producer benchmark, as the ceiling for `publisher`:
# builds `rdkafka_performance` from the very librdkafka sources the rdkafka
# crate vendors (so both sides run the same client library), then produces
# with the same settings as `publisher` (acks=all, idempotence, linger 5 ms).
#
#   scripts/rdkafka-perf.sh [--count N] [--size BYTES] [--topic T] [-- extra rdkafka_performance args]
#
# Environment: KAFKA_BROKERS (127.0.0.1:19092).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COUNT=1000000; SIZE=100; TOPIC="perf-ceiling"; EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --count) COUNT="$2"; shift ;;
    --size) SIZE="$2"; shift ;;
    --topic) TOPIC="$2"; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "rdkafka-perf: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
BROKERS="${KAFKA_BROKERS:-127.0.0.1:19092}"
BUILD="$ROOT/target/rdkafka-perf"
BIN="$BUILD/librdkafka/examples/rdkafka_performance"

if [[ ! -x "$BIN" ]]; then
  # The rdkafka-sys version pinned in Cargo.lock names the vendored sources.
  version=$(awk '/^name = "rdkafka-sys"/{getline; gsub(/"/,"",$3); print $3}' "$ROOT/Cargo.lock")
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"rdkafka-sys-$version"/librdkafka 2>/dev/null | head -1)
  if [[ -z "$src" ]]; then
    (cd "$ROOT" && cargo fetch --quiet)
    src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"rdkafka-sys-$version"/librdkafka | head -1)
  fi
  echo "rdkafka-perf: building rdkafka_performance from $src (a few minutes, once)" >&2
  rm -rf "$BUILD"; mkdir -p "$BUILD"; cp -r "$src" "$BUILD/librdkafka"
  (cd "$BUILD/librdkafka" \
    && ./configure --disable-zstd --disable-gssapi --disable-curl >"$BUILD/configure.log" 2>&1 \
    && make -j"$(nproc)" libs >"$BUILD/make.log" 2>&1 \
    && make -C examples rdkafka_performance >>"$BUILD/make.log" 2>&1) \
    || { tail -n 30 "$BUILD"/*.log >&2; echo "rdkafka-perf: build failed (logs in $BUILD)" >&2; exit 1; }
fi

# -P produce, -c count, -s size, -t topic; -X the same properties as publisher.
exec "$BIN" -P -t "$TOPIC" -b "$BROKERS" -c "$COUNT" -s "$SIZE" \
  -X acks=all -X enable.idempotence=true -X linger.ms=5 -X batch.size=1000000 -X batch.num.messages=10000 \
  -X queue.buffering.max.messages=500000 "${EXTRA[@]}"
