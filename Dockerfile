# Multi-stage build of all four binaries; the runtime image holds only them
# and the shared libraries they link (OpenSSL, zlib).
#   docker build -t streamkit .
#   docker run --rm streamkit producer-api --help
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY crates crates
RUN cargo build --release --locked -p producer-api -p consumer -p publisher -p bench \
    && cp target/release/producer-api target/release/consumer target/release/publisher target/release/bench /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 streamkit
COPY --from=build /usr/local/bin/producer-api /usr/local/bin/consumer /usr/local/bin/publisher /usr/local/bin/bench /usr/local/bin/
USER streamkit
EXPOSE 8082 9464
CMD ["producer-api"]
