# Everyday commands. `just --list` shows them all.

set dotenv-load := true

# Show the recipes.
default:
    @just --list

# Start a broker on 127.0.0.1:19092: Redpanda + Console with Docker (`just up cluster`: 3 nodes,
# `just up monitoring`: Prometheus + Grafana), else the local Nisshi broker.
up WHAT="single":
    #!/usr/bin/env bash
    set -euo pipefail
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        case "{{WHAT}}" in
            single) docker compose -f compose/redpanda.yml up -d --wait
                    echo "Redpanda on 127.0.0.1:19092, Console on http://localhost:8080" ;;
            cluster) docker compose -f compose/cluster.yml up -d --wait
                    echo "3-node Redpanda on 127.0.0.1:19092,29092,39092; create topics with TOPIC_REPLICATION_FACTOR=3" ;;
            monitoring) docker compose -f compose/monitoring.yml up -d
                    echo "Grafana on http://localhost:3000 (dashboard streamkit), Prometheus on http://localhost:9090" ;;
            *) echo "just up [single|cluster|monitoring]"; exit 2 ;;
        esac
    elif [[ "{{WHAT}}" != single ]]; then
        echo "No Docker engine reachable: '{{WHAT}}' needs Docker. Plain 'just up' starts the local broker."; exit 1
    else
        echo "No Docker engine reachable: starting the local Nisshi broker instead (scripts/broker.sh)."
        scripts/broker.sh install
        scripts/broker.sh start
    fi

# Stop what `just up` started.
down:
    #!/usr/bin/env bash
    set -euo pipefail
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        for f in compose/monitoring.yml compose/cluster.yml compose/redpanda.yml; do docker compose -f "$f" down; done
    fi
    scripts/broker.sh stop

# Local broker without Docker (memory storage); `just broker --sqlite` keeps data on disk.
broker *ARGS:
    scripts/broker.sh install
    scripts/broker.sh start {{ARGS}}

# Stop the local broker.
broker-stop:
    scripts/broker.sh stop

# Install prerequisites (system packages, just, the local broker).
setup:
    scripts/setup.sh

# The full test suite against a real broker (what CI runs).
test *ARGS:
    scripts/test.sh {{ARGS}}

# Broker, consumer and producer-api together, with a walk-through of sending an event.
demo:
    scripts/demo.sh

# Bulk load: `just publish --count 1000000 --size 200`.
publish *ARGS:
    cargo run --release -p publisher -- {{ARGS}}

# Run the consumer: `just consume --workers 4`.
consume *ARGS:
    cargo run --release -p consumer -- {{ARGS}}

# Run the HTTP/WebSocket gateway.
api *ARGS:
    cargo run --release -p producer-api -- {{ARGS}}

# Benchmarks: `just bench e2e --rates 1000,10000`.
bench *ARGS:
    cargo run --release -p bench -- {{ARGS}}

# Ten minutes at a steady rate through API -> consumer -> WebSocket, reporting RSS, fds and p99.
soak:
    KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:19092} scripts/soak.sh

# The cost report: CPU µs per message of gateway, consumer, broker and load client (README, Performance).
cost *ARGS:
    scripts/cost.sh {{ARGS}}

# Throughput series: librdkafka ceilings against publisher and consumer, e2e, the API case.
perf *ARGS:
    scripts/perf.sh {{ARGS}}

# Format and lint.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
