#!/usr/bin/env bash
# The main job: install what is needed, then run the pipeline of the sample C
# repository in examples/hello-c through the whole system and print its log.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build-example-image.sh gcc:12-bookworm

repo=$(mktemp -d)
trap 'rm -rf "$repo"' EXIT
cp -r examples/hello-c/. "$repo/"
git -C "$repo" init -q -b main
git -C "$repo" add -A
git -C "$repo" -c user.name=Stasis -c user.email=stasis@localhost \
    commit -q -m "Sample C program"

exec .venv/bin/stasis run "$repo"
