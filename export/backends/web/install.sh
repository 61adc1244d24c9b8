#!/usr/bin/env bash
# The web target's runtimes: the npm packages pinned in js/package-lock.json (installed next to the scripts,
# without onnxruntime-node's binary download) and Debian's Chromium when no Chromium is on PATH.
set -euo pipefail
JS_DIR="$(cd "$(dirname "$0")" && pwd)/js"
ONNXRUNTIME_NODE_INSTALL=skip npm ci --prefix "$JS_DIR" --no-audit --no-fund
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    $SUDO apt-get install -y --no-install-recommends chromium \
        || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends chromium; }
fi
