#!/usr/bin/env bash
# Start dockerd in the background when no Docker daemon responds, and wait for it.
set -euo pipefail
if docker info >/dev/null 2>&1; then
    exit 0
fi
log=/var/log/stasis-dockerd.log
echo "start-docker: no Docker daemon responds; starting dockerd (log: $log)"
nohup dockerd >"$log" 2>&1 &
for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then
        exit 0
    fi
    sleep 0.5
done
echo "start-docker: dockerd did not respond within 30s; see $log" >&2
tail -20 "$log" >&2 || true
exit 1
