"""HTTP side of telemetry: the gateway's request middleware and `/metrics`.

`telemetry_middleware` opens a server span per request, continuing a
`traceparent` the client sent, and counts the request by route template. The
route is `resource.canonical` of the matched route, such as
`/api/v1/jobs/{job_id}`, never the raw path, which contains ids. A request for
one job puts its id on the span and on the log lines of its handler.
"""

import contextlib
import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import (
    TraceContextTextMapPropagator,
)
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .logformat import job_log_context
from .metrics import GatewayMetrics
from .tracing import ATTR_JOB, tracer

log = logging.getLogger(__name__)

REGISTRY_KEY = web.AppKey("stasis_metrics_registry", CollectorRegistry)
GATEWAY_METRICS_KEY = web.AppKey("stasis_gateway_metrics", GatewayMetrics)
UNMATCHED_ROUTE = "unmatched"
"""Route label of a request that matched no route (a 404 or 405)."""

_propagator = TraceContextTextMapPropagator()


def route_template(request: web.Request) -> str:
    """Return the matched route's template, or "unmatched"."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    if resource is None:
        return UNMATCHED_ROUTE
    return resource.canonical


@web.middleware
async def telemetry_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Trace and count one request; place it first, to see the final status."""
    route = route_template(request)
    parent = _propagator.extract(dict(request.headers))
    started = time.monotonic()
    status = 500
    job_id = request.match_info.get("job_id")
    with (
        job_log_context(job_id) if job_id else contextlib.nullcontext(),
        tracer().start_as_current_span(
            f"{request.method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "http.route": route,
                "url.path": request.path,
            },
        ) as span,
    ):
        if job_id:
            span.set_attribute(ATTR_JOB, job_id)
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)
            metrics = request.app.get(GATEWAY_METRICS_KEY)
            if metrics is not None:
                elapsed = time.monotonic() - started
                metrics.record_request(request.method, route, status, elapsed)


async def metrics_handler(request: web.Request) -> web.Response:
    """Serve the registry in Prometheus's text format."""
    body = generate_latest(request.app[REGISTRY_KEY])
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def add_metrics_route(app: web.Application, registry: CollectorRegistry) -> None:
    """Serve `registry` at `/metrics` of `app`."""
    app[REGISTRY_KEY] = registry
    app.router.add_get("/metrics", metrics_handler)


class MetricsServer:
    """A `/metrics` listener of its own, for a service that runs alone."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on host and port; port 0 picks a free one."""
        app = web.Application()
        add_metrics_route(app, self.registry)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = addresses[0][1]
        log.info("metrics served on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
