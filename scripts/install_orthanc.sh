#!/usr/bin/env bash
# Install Debian's Orthanc and its DICOMweb plugin (a real PACS for the DICOM node's
# end-to-end tests: C-STORE and STOW-RS).
# Only the binary is used: the tests start their own Orthanc on 127.0.0.1 with a
# generated configuration and storage in a temporary folder; the package's system
# service is not needed (it is stopped when the package started it).
# Idempotent: does nothing when the Orthanc binary and the plugin are already there.
# Usage: bash scripts/install_orthanc.sh   (needs root or sudo; prints the binary path)
set -euo pipefail

find_orthanc() {
    for p in "$(command -v Orthanc 2>/dev/null || true)" /usr/sbin/Orthanc /usr/bin/Orthanc; do
        if [ -n "$p" ] && [ -x "$p" ]; then echo "$p"; return 0; fi
    done
    return 1
}

PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
if path=$(find_orthanc) && [ -e "$PLUGIN" ]; then
    echo "$path"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "install_orthanc.sh: need root (or sudo) to apt-get install orthanc" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: do not start the package's system service during the install.
had_policy=0
[ -e /usr/sbin/policy-rc.d ] && had_policy=1
if [ "$had_policy" = 0 ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
fi
cleanup() { if [ "$had_policy" = 0 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
if ! $SUDO apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb >/dev/null 2>&1; then
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q --no-install-recommends orthanc orthanc-dicomweb >/dev/null
fi
if path=$(find_orthanc); then
    echo "$path"
else
    echo "install_orthanc.sh: apt-get finished but no Orthanc binary was found" >&2
    exit 1
fi
