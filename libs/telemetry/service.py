"""The telemetry lifecycle of one service: registry, `/metrics`, span export."""

import asyncio
import logging

from prometheus_client import CollectorRegistry

from libs.config.model import TelemetryConfig

from .http import MetricsServer
from .metrics import watch_nats
from .tracing import start_otlp_export, stop_otlp_export, tracer_provider

log = logging.getLogger(__name__)


class ServiceTelemetry:
    """The registry, `/metrics` listener and span export of one service.

    Given a `registry`, the service shares it with others in the process (as
    in `stasis up`) and serves no `/metrics` of its own. Without one it makes
    its own and, when `metrics_port` is set and `serve_metrics` is true,
    serves it there. The gateway passes false: it serves `/metrics` itself.
    """

    def __init__(
        self,
        config: TelemetryConfig,
        service: str,
        registry: CollectorRegistry | None = None,
        *,
        serve_metrics: bool = True,
    ) -> None:
        self.config = config
        self.service = service
        self.owns_registry = registry is None
        self.serve_metrics = serve_metrics and registry is None
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics_server: MetricsServer | None = None
        self._exporting = False
        watch_nats(self.registry, service)

    async def start(self) -> None:
        """Make the tracer provider, start span export and the metrics listener."""
        tracer_provider(self.config.service_name)
        endpoint = self.config.otlp_endpoint
        if endpoint:
            start_otlp_export(endpoint)
            self._exporting = True
            log.info("%s exports spans to %s", self.service, endpoint)
        port = self.config.metrics_port
        if self.serve_metrics and port is not None:
            server = MetricsServer(self.registry, self.config.metrics_host, port)
            await server.start()
            self.metrics_server = server

    async def stop(self) -> None:
        """Stop the metrics listener, then flush and stop span export."""
        if self.metrics_server is not None:
            await self.metrics_server.stop()
            self.metrics_server = None
        if self._exporting and self.config.otlp_endpoint:
            self._exporting = False
            await asyncio.to_thread(stop_otlp_export, self.config.otlp_endpoint)
