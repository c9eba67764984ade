#!/usr/bin/env bash
# Fetch the Scalar API reference from the npm registry and put its standalone
# browser bundle where the gateway serves it (/api-docs/scalar.js), so the
# reference page needs no internet. Safe to run again: it skips a bundle of the
# pinned version that is already there. Needs npm.
set -euo pipefail
cd "$(dirname "$0")/.."

package="@scalar/api-reference"
version="${SCALAR_VERSION:-1.76.4}"
static_dir="services/gateway/static"
bundle="$static_dir/scalar.js"
stamp="$static_dir/scalar.version"

if [[ -f "$bundle" && -f "$stamp" && "$(cat "$stamp")" == "$version" ]]; then
    echo "build-scalar: $package@$version is already in $bundle"
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "build-scalar: npm is missing; install it (Debian: apt-get install npm)" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "build-scalar: fetching $package@$version"
(cd "$work" && npm pack --silent "$package@$version" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work"

# The package's IIFE build defines window.Scalar and needs no other file.
source_file="$work/package/dist/browser/standalone.js"
if [[ ! -f "$source_file" ]]; then
    echo "build-scalar: $package@$version has no dist/browser/standalone.js;" \
        "pick a version that has it with SCALAR_VERSION=..." >&2
    exit 1
fi
mkdir -p "$static_dir"
# Drop the source map comment: the map is not served.
grep -v '^//# sourceMappingURL=' "$source_file" >"$bundle.tmp"
mv "$bundle.tmp" "$bundle"
echo "$version" >"$stamp"
echo "build-scalar: wrote $bundle ($(wc -c <"$bundle") bytes, MIT licensed)"
