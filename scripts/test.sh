#!/usr/bin/env bash
# The project's test command: installs what the tests need on a fresh machine (Redis from
# Debian's packages), checks formatting and lints, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    echo "installing redis-server (the GCS Redis backend is tested against a real one)"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
# The harness starts its own redis-server on free loopback ports; a packaged service that
# may have auto-started is not used.

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"
