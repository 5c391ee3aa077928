#!/usr/bin/env bash
# The project's test command: installs what the tests need on a fresh machine (Redis and
# iproute2 from Debian's packages), checks formatting and lints, then runs every test of the
# workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# install_if_missing COMMAND PACKAGE WHY: installs PACKAGE from Debian's packages when
# COMMAND is not on PATH.
install_if_missing() {
    if ! command -v "$1" >/dev/null 2>&1; then
        echo "installing $2 ($3)"
        if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$2" >/dev/null
    fi
}
install_if_missing redis-server redis-server "the GCS Redis backend is tested against a real one"
install_if_missing ip iproute2 "the multi-host tests put each host in a network namespace"
install_if_missing kubectl kubernetes-client "the Kubernetes simulator is checked with kubectl get and delete"
install_if_missing promtool prometheus "every metrics endpoint is checked with promtool and scraped by a real Prometheus"
install_if_missing chromium chromium "the dashboard's pages are tested in headless Chromium"
# The harness starts its own redis-server, and the metrics test its own prometheus, on free
# loopback ports; a packaged service that may have auto-started is not used.

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked "$@"
