"""The gateway service: the aiohttp application and its lifecycle."""

import asyncio
import logging

from aiohttp import web
from aiohttp.typedefs import Handler
from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from libs.artifacts import ArtifactStore
from libs.artifacts.from_config import store_from_config
from libs.config import Config
from libs.telemetry.http import (
    GATEWAY_METRICS_KEY,
    add_metrics_route,
    telemetry_middleware,
)
from libs.telemetry.metrics import GatewayMetrics
from libs.telemetry.service import ServiceTelemetry
from libs.units import parse_size
from services.runtime import ServiceState, connect_jetstream, open_vault

from .api import add_routes
from .artifacts import STORE_KEY, add_artifact_routes
from .auth import AUTHENTICATOR_KEY, Authenticator, authenticate, check_job_access
from .keys import CONFIG_KEY, JS_KEY, PROJECTION_KEY, VAULT_KEY
from .openapi import add_docs_routes
from .problems import ProblemError, problem
from .projection import Projection
from .ratelimit import LIMITS_KEY, RequestLimits, apply_limits
from .retention import retention_loop

log = logging.getLogger(__name__)


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """Turn ProblemError and unexpected errors into problem-details responses."""
    try:
        return await handler(request)
    except ProblemError as exc:
        return exc.response(instance=request.path)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = problem(
            exc.status, exc.reason, f"{exc.reason}: {request.path}", request.path
        )
        # Keep headers such as Allow on 405 and WWW-Authenticate on 401.
        for name, value in exc.headers.items():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem(
            500,
            "Internal server error",
            "the gateway failed to handle this request; see its log",
            request.path,
        )


class Gateway:
    """The HTTP API in front of the event streams."""

    def __init__(
        self,
        config: Config,
        nats_url: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.state = ServiceState.CREATED
        self._nats_url = nats_url
        self._nc: Client | None = None
        self.projection = Projection()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._store: ArtifactStore | None = None
        self._retention: asyncio.Task[None] | None = None
        self.telemetry = ServiceTelemetry(
            config.telemetry, "gateway", registry, serve_metrics=False
        )
        self.metrics = GatewayMetrics(self.telemetry.registry)

    def make_app(self) -> web.Application:
        """Build the aiohttp application (connected state is added in start)."""
        auth = self.config.auth
        # Order matters: the key is identified before the limits that count per
        # key, and job ownership is checked last, just before the handler.
        app = web.Application(
            middlewares=[
                telemetry_middleware,
                problem_middleware,
                authenticate,
                apply_limits,
                check_job_access,
            ],
            client_max_size=parse_size(auth.max_body_bytes),
        )
        app[AUTHENTICATOR_KEY] = Authenticator.from_config(auth)
        app[LIMITS_KEY] = RequestLimits(auth)
        app[GATEWAY_METRICS_KEY] = self.metrics
        add_metrics_route(app, self.telemetry.registry)
        add_routes(app)
        add_artifact_routes(app)
        add_docs_routes(app)
        return app

    async def start(self) -> None:
        """Connect, replay the projection, then listen for HTTP."""
        self.state = ServiceState.STARTING
        await self.telemetry.start()
        self._nc, js = await connect_jetstream(
            self.config, "stasis-gateway", self._nats_url
        )
        await self.projection.start(js)
        app = self.make_app()
        app[JS_KEY] = js
        app[PROJECTION_KEY] = self.projection
        app[CONFIG_KEY] = self.config
        app[VAULT_KEY] = await open_vault(js, self.config)
        self._store = store_from_config(self.config)
        app[STORE_KEY] = self._store
        retention = self.config.artifacts.retention
        if retention is not None:
            self._retention = asyncio.create_task(
                retention_loop(
                    self.projection,
                    self._store,
                    js,
                    float(retention),
                    float(self.config.artifacts.retention_interval),
                )
            )
        self._runner = web.AppRunner(app, shutdown_timeout=2.0)
        await self._runner.setup()
        server = self.config.server
        site = web.TCPSite(self._runner, server.host, server.port)
        await site.start()
        addresses = self._runner.addresses
        self.port = addresses[0][1] if addresses else server.port
        self.state = ServiceState.RUNNING
        log.info("gateway listening on http://%s:%s", server.host, self.port)

    @property
    def store(self) -> ArtifactStore:
        """The artifact store, open while the gateway runs."""
        assert self._store is not None, "the gateway is not started"
        return self._store

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context, connected while the gateway runs."""
        assert self._nc is not None, "the gateway is not started"
        return self._nc.jetstream()

    @property
    def url(self) -> str:
        """The base URL the gateway listens on."""
        return f"http://{self.config.server.host}:{self.port}"

    async def stop(self) -> None:
        """Stop serving, stop the projection and close NATS, in that order."""
        self.state = ServiceState.STOPPING
        if self._retention is not None:
            self._retention.cancel()
            await asyncio.gather(self._retention, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.projection.stop()
        if self._store is not None:
            await self._store.close()
        if self._nc is not None:
            await self._nc.close()
        await self.telemetry.stop()
        self.state = ServiceState.STOPPED
        log.info("gateway stopped")
