#!/usr/bin/env bash
# System packages the test suite drives: Debian's Chromium (browser tests through Playwright) and
# PostgreSQL (server-module tests on a real PostgreSQL). Installs what is missing when run as root on
# Debian/Ubuntu; otherwise says what is missing (those tests are then skipped with that reason).
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "test-setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Another apt may hold the lock briefly (unattended upgrades, a parallel setup): wait for it.
    apt_get() { apt-get -o DPkg::Lock::Timeout=300 "$@"; }
    if ! apt_get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        if ! { apt_get update -qq && apt_get install -y --no-install-recommends "${missing[@]}" >/dev/null; }; then
            echo "test-setup: could not install ${missing[*]} with apt-get. Install them, or run" \
                 ".venv/bin/python -m pytest directly (those tests are then skipped)." >&2
            exit 1
        fi
    fi
    # The cluster the package creates is not used (tests start their own); don't leave it running.
    if [[ " ${missing[*]} " == *" postgresql "* ]] && command -v pg_ctlcluster >/dev/null; then
        service postgresql stop >/dev/null 2>&1 || true
    fi
else
    echo "test-setup: not installing ${missing[*]} (needs root and apt-get);" \
         "the browser/PostgreSQL tests will be skipped" >&2
fi
