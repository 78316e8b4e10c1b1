#!/usr/bin/env bash
# Local Kafka-compatible broker without Docker: Nisshi (formerly Tansu).
#
#   scripts/broker.sh install            install nisshi 0.8.1 from crates.io (skipped if present)
#   scripts/broker.sh start [--sqlite [FILE]] [--port PORT]
#                                        start in the background and wait until it answers
#   scripts/broker.sh stop | status | restart [...] | logs
#
# Memory storage by default (fast, forgotten on stop); --sqlite keeps the data
# in FILE (default target/broker/nisshi.db) across restarts.
# Environment: BROKER_PORT (19092), BROKER_DIR (target/broker), NISSHI_BIN,
# NISSHI_OPT_LEVEL (1; the optimisation level `install` compiles with).
set -euo pipefail

NISSHI_VERSION=0.8.1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${BROKER_PORT:-19092}"
DIR="${BROKER_DIR:-$ROOT/target/broker}"
STORAGE=memory
DB=""

die() { echo "broker: $*" >&2; exit 1; }
say() { echo "broker: $*" >&2; }

nisshi_bin() {
  if [[ -n "${NISSHI_BIN:-}" ]]; then echo "$NISSHI_BIN"; return; fi
  if command -v nisshi >/dev/null 2>&1; then command -v nisshi; return; fi
  local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin/nisshi"
  [[ -x "$cargo_bin" ]] && echo "$cargo_bin"
}

installed_version_ok() {
  # `cargo install --list` records what cargo installed and its version.
  cargo install --list 2>/dev/null | grep -q "^nisshi v${NISSHI_VERSION}:" && [[ -n "$(nisshi_bin)" ]]
}

install() {
  if installed_version_ok || { [[ -n "${NISSHI_BIN:-}" ]] && [[ -x "$NISSHI_BIN" ]]; }; then
    say "nisshi ${NISSHI_VERSION} already installed at $(nisshi_bin)"
    return
  fi
  command -v cargo >/dev/null || die "cargo is not installed; install Rust from rustup first"
  local opt="${NISSHI_OPT_LEVEL:-1}"
  say "installing nisshi ${NISSHI_VERSION} from crates.io (opt-level $opt; about 19 CPU-minutes of compiling at opt-level 1, once)"
  # nisshi declares rustc 1.96 but builds and runs with 1.95; --locked uses the
  # dependency versions it was released and tested with.
  # Only the storage engines this project runs (memory:// is dynostore's,
  # sqlite:// libsql's); the default set adds postgres. opt-level 1 instead
  # of 3 cuts LLVM's share of the build; the broker then spends about 10 %
  # more CPU per record in bulk publishing and up to 20 % in the API case
  # (README, Performance). NISSHI_OPT_LEVEL=3 builds it for benchmarks.
  # Without cargo's default thin local LTO: 18.9 instead of 22.4 CPU-minutes,
  # and no difference in the broker's CPU per message we could measure.
  CARGO_PROFILE_RELEASE_OPT_LEVEL="$opt" CARGO_PROFILE_RELEASE_LTO=off cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
    --no-default-features --features dynostore,libsql \
    || die "cargo install nisshi ${NISSHI_VERSION} failed (see the compiler output above)"
}

# Sends a Kafka Metadata v0 request and checks the reply's correlation id:
# "answers a metadata request" in ~20 lines, without a Kafka client.
metadata_ok() {
  python3 - "$1" "$2" <<'PY' 2>/dev/null
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
client = b"broker.sh"
# api_key=3 (Metadata), api_version=0, correlation_id=7, client_id, topics=[] (all)
body = struct.pack(">hhih", 3, 0, 7, len(client)) + client + struct.pack(">i", 0)
with socket.create_connection((host, port), timeout=2) as s:
    s.settimeout(2)
    s.sendall(struct.pack(">i", len(body)) + body)
    head = b""
    while len(head) < 8:
        chunk = s.recv(8 - len(head))
        if not chunk:
            sys.exit(1)
        head += chunk
    size, correlation = struct.unpack(">ii", head)
    sys.exit(0 if correlation == 7 and size > 4 else 1)
PY
}

pid_alive() { [[ -f "$DIR/nisshi.pid" ]] && kill -0 "$(cat "$DIR/nisshi.pid")" 2>/dev/null; }

start() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --sqlite) STORAGE=sqlite; if [[ $# -gt 1 && "$2" != --* ]]; then DB="$2"; shift; fi ;;
      --memory) STORAGE=memory ;;
      --port) PORT="$2"; shift ;;
      *) die "unknown option for start: $1 (see the header of $0)" ;;
    esac
    shift
  done
  mkdir -p "$DIR"
  if metadata_ok 127.0.0.1 "$PORT"; then
    if pid_alive; then say "already running on 127.0.0.1:$PORT (pid $(cat "$DIR/nisshi.pid"))";
    else say "a Kafka-compatible broker already answers on 127.0.0.1:$PORT; using it"; fi
    return
  fi
  local bin; bin="$(nisshi_bin)"
  [[ -n "$bin" ]] || die "nisshi is not installed: run '$0 install' first"
  local engine="memory://nisshi/" workdir="$DIR"
  if [[ "$STORAGE" == sqlite ]]; then
    DB="${DB:-$DIR/nisshi.db}"
    mkdir -p "$(dirname "$DB")"
    # Nisshi resolves the path of sqlite://PATH against its working
    # directory, so it runs from the database's folder.
    workdir="$(cd "$(dirname "$DB")" && pwd)"
    engine="sqlite://$(basename "$DB")"
    DB="$workdir/$(basename "$DB")"
  fi
  if (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; then
    die "port $PORT is taken by something that is not a Kafka broker; set BROKER_PORT or free it"
  fi
  say "starting nisshi on 127.0.0.1:$PORT with $engine${DB:+ ($DB)} (log: $DIR/nisshi.log)"
  # STORAGE_ENGINE etc. in the caller's environment must not override our flags.
  (cd "$workdir" && exec env -u STORAGE_ENGINE -u LISTENER_URL -u ADVERTISED_LISTENER_URL \
    nohup "$bin" broker \
      --listener-url "tcp://127.0.0.1:$PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$PORT" \
      --storage-engine "$engine" \
      --group-initial-rebalance-delay 500ms \
      >"$DIR/nisshi.log" 2>&1) &
  echo $! >"$DIR/nisshi.pid"
  echo "$engine${DB:+ ($DB)}" >"$DIR/nisshi.storage"
  for _ in $(seq 1 300); do
    if metadata_ok 127.0.0.1 "$PORT"; then say "ready on 127.0.0.1:$PORT"; return; fi
    if ! pid_alive; then
      tail -n 30 "$DIR/nisshi.log" >&2 || true
      die "nisshi exited during start-up (log above: $DIR/nisshi.log)"
    fi
    sleep 0.1
  done
  tail -n 30 "$DIR/nisshi.log" >&2 || true
  die "nisshi did not answer a metadata request on 127.0.0.1:$PORT within 30 s (log: $DIR/nisshi.log)"
}

stop() {
  if ! pid_alive; then say "not running"; rm -f "$DIR/nisshi.pid"; return; fi
  local pid; pid="$(cat "$DIR/nisshi.pid")"
  kill "$pid"
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$DIR/nisshi.pid"; say "stopped (pid $pid)"; return; }
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$DIR/nisshi.pid"
  say "stopped (pid $pid, killed after 10 s)"
}

status() {
  if metadata_ok 127.0.0.1 "$PORT"; then
    if pid_alive; then echo "running on 127.0.0.1:$PORT (pid $(cat "$DIR/nisshi.pid"), $(cat "$DIR/nisshi.storage" 2>/dev/null))";
    else echo "a broker not started by this script answers on 127.0.0.1:$PORT"; fi
  else
    echo "no broker answers on 127.0.0.1:$PORT"; return 1
  fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
  install) install ;;
  start) start "$@" ;;
  stop) stop ;;
  restart) stop; start "$@" ;;
  status) status ;;
  logs) exec tail -n 100 -f "$DIR/nisshi.log" ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
