#!/usr/bin/env bash
# Make the image that the example pipeline names (gcc:12-bookworm) available:
# pull it where a registry answers, otherwise build an equivalent one (Debian
# bookworm with gcc 12 and make) with debootstrap and `docker import`.
set -euo pipefail
image=${1:-gcc:12-bookworm}
if docker image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi
if timeout 60 docker pull "$image" >/dev/null 2>&1; then
    echo "build-example-image: pulled $image"
    exit 0
fi
echo "build-example-image: no registry answered; building $image with debootstrap"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
debootstrap --variant=minbase --include=gcc,libc6-dev,make bookworm "$root" "$mirror" \
    >/tmp/stasis-debootstrap.log 2>&1 || {
    echo "build-example-image: debootstrap failed; see /tmp/stasis-debootstrap.log" >&2
    exit 1
}
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$image" >/dev/null
echo "build-example-image: built $image"
