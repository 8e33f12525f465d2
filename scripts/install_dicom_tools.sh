#!/usr/bin/env bash
# Install Debian's dicom3tools (dciodvfy: the DICOM IOD validator the SEG/SR tests run).
# Idempotent: does nothing when dciodvfy is already on PATH.
# Usage: bash scripts/install_dicom_tools.sh   (needs root or sudo; prints the binary path)
set -euo pipefail

if command -v dciodvfy >/dev/null 2>&1; then
    command -v dciodvfy
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "install_dicom_tools.sh: need root (or sudo) to apt-get install dicom3tools" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# Cached package lists first; refresh them once when the install fails (stale or empty lists).
if ! $SUDO apt-get install -y -q --no-install-recommends dicom3tools >/dev/null 2>&1; then
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q --no-install-recommends dicom3tools >/dev/null
fi
if command -v dciodvfy >/dev/null 2>&1; then
    command -v dciodvfy
else
    echo "install_dicom_tools.sh: apt-get finished but dciodvfy is not on PATH" >&2
    exit 1
fi
