#!/usr/bin/env bash
# Installs what building, testing and running need on a fresh Debian machine:
# the C toolchain pieces librdkafka is built with, `just`, and the local broker.
# Everything is skipped when already present, so it is cheap to run again.
#
#   scripts/setup.sh [--browser] [--no-broker]
#     --browser    also Chromium, which only the live page's browser test needs
#     --no-broker  skip the local broker (scripts/broker.sh install does it)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "setup: $*" >&2; }
BROWSER=0; BROKER=1
for arg in "$@"; do
  case "$arg" in
    --browser) BROWSER=1 ;;
    --no-broker) BROKER=0 ;;
    *) say "unknown option $arg"; exit 2 ;;
  esac
done

# librdkafka (vendored by rdkafka-sys) is compiled with make and a C compiler;
# TLS/SASL-SCRAM support links OpenSSL, compression links zlib. python3-venv:
# the test suite installs schemathesis into a virtual environment.
packages=(build-essential pkg-config libssl-dev zlib1g-dev python3 python3-venv curl)
# Chromium drives the live page's browser test headless.
((BROWSER)) && packages+=(chromium)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  say "installing system packages: ${missing[*]}"
  sudo=""; [[ "$(id -u)" == 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { say "cargo not found: install Rust with rustup first"; exit 1; }

if ! command -v just >/dev/null 2>&1; then
  # The PyPI package ships the prebuilt `just` binary: seconds instead of a
  # compile. Falls back to cargo where pip is missing.
  say "installing just"
  if command -v pip3 >/dev/null 2>&1 && pip3 install --quiet rust-just >/dev/null 2>&1 && command -v just >/dev/null 2>&1; then :;
  else cargo install just --locked --quiet; fi
fi

((BROKER)) && "$ROOT/scripts/broker.sh" install
exit 0
