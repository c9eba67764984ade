"""Metrics, traces and structured logs of every Stasis service.

Import the submodules: `metrics` (Prometheus families), `tracing` (spans and
`traceparent` in NATS headers), `logformat` (JSON and key=value log lines),
`http` (the gateway's middleware and `/metrics`) and `service` (start and
stop per service). This module imports none of them, so that
`libs.events.connection` can import `connections` without an import cycle.
"""
