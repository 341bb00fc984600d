#!/usr/bin/env bash
# Headless Chromium for the report test (tests/test_report.py screenshots index.html).
# Idempotent: does nothing when `chromium` is already on PATH. Needs root (CI runs as root) and
# Debian's package lists (`apt-get update` first). CI installs it with the rest in .ci/packages.sh.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    echo "chromium present: $(command -v chromium)"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
echo "chromium installed: $(command -v chromium)"
