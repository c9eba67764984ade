#!/usr/bin/env bash
# Install everything Stasis CI and its tests need on a fresh Debian machine (run as
# root): system packages, a running Docker daemon, the Python virtualenv and the
# small image the tests use. Safe to run again; it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(docker.io busybox-static git git-lfs openssh-server debootstrap ca-certificates)
missing=()
# Node.js runs the test that follows a job with a NATS client Stasis did not
# write; machines that already have node keep theirs.
command -v node >/dev/null 2>&1 || apt_packages+=(nodejs npm)
for package in "${apt_packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

bash scripts/start-docker.sh

if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
# This machine's pip configuration names local package folders that may be
# missing; pip warns once per package about each, which hides real errors.
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' 2>&1 |
    { grep -v "is ignored: it is neither a file nor a directory" || true; }

(cd tests/node && npm ci --no-audit --no-fund --silent)
# The API reference page serves Scalar's bundle itself, so it needs no internet.
bash scripts/build-scalar.sh

bash scripts/build-test-image.sh
echo "setup: done"
