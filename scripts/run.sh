#!/usr/bin/env bash
# Run flatgigs on its embedded defaults (SQLite and embedded stores; no server to install).
# Prints the URL and how to sign in, then serves until Ctrl-C.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
ensure_venv
cd "$ROOT"
exec "$VENV/bin/flatgigs" demo "$@"
