#!/usr/bin/env bash
# Build the tiny image the tests run steps in, from Debian's busybox-static, with
# `docker import` (no registry needed). Rebuilt only when missing.
set -euo pipefail
image=${STASIS_TEST_IMAGE:-stasis-test/busybox:latest}
if docker image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/tmp" "$root/workspace"
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [[ "$applet" == busybox ]] || ln -s busybox "$root/bin/$applet"
done
chmod 1777 "$root/tmp"
tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' - "$image" >/dev/null
echo "build-test-image: built $image"
