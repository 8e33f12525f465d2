#!/usr/bin/env bash
# Install Debian's chromium for the headless-browser report tests and benchmark.
# Idempotent: does nothing when a chromium binary is already on PATH.
# Usage: bash scripts/install_chromium.sh   (needs root or sudo; prints the binary path)
set -euo pipefail

find_chromium() {
    for name in chromium chromium-browser google-chrome google-chrome-stable; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
    done
    return 1
}

if path=$(find_chromium); then
    echo "$path"
    exit 0
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "install_chromium.sh: need root (or sudo) to apt-get install chromium" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# Try the cached package lists first; refresh them when the install fails (stale or empty lists).
if ! $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1; then
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
if path=$(find_chromium); then
    echo "$path"
else
    echo "install_chromium.sh: apt-get finished but no chromium binary is on PATH" >&2
    exit 1
fi
