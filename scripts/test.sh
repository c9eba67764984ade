#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine (as root): install what is
# needed, then lint, type-check and run every test against real NATS and Docker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
