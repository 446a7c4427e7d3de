#!/usr/bin/env bash
# Run the whole test suite on a fresh Debian machine: installs what is missing (Debian packages
# for the real servers the tests start, the virtual environment, the Python packages), then pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k isolation
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"

missing=()
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v influxd >/dev/null || missing+=(influxdb)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null || missing+=(chromium)  # the editor's browser tests (Playwright drives /usr/bin/chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi

ensure_venv "[test]"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
