"""Connecting to NATS with reconnects, and a clear error when no server responds."""

import logging

import nats
from nats.aio.client import Client
from nats.errors import NoServersError

from libs.telemetry.connections import NATS_CONNECTIONS

from .errors import NatsUnavailable

log = logging.getLogger(__name__)


async def connect(url: str, name: str, connect_timeout: float = 5.0) -> Client:
    """Connect to the NATS server(s) at `url` (comma-separated) as client `name`.

    Once connected, the client reconnects forever with a short pause between
    tries, so that a restarted server is picked up by itself. Raises
    NatsUnavailable when no server responds to the first connect.
    """
    servers = [s.strip() for s in url.split(",") if s.strip()]

    async def on_error(exc: Exception) -> None:
        log.warning("NATS error on %s: %s", name, exc)

    async def on_disconnect() -> None:
        if client is not None and (client.is_closed or client.is_draining):
            return
        NATS_CONNECTIONS.record(name, "disconnect")
        log.warning("disconnected from NATS (%s); reconnecting", name)

    async def on_reconnect() -> None:
        NATS_CONNECTIONS.record(name, "reconnect")
        log.info("reconnected to NATS (%s)", name)

    client: Client | None = None
    try:
        client = await nats.connect(
            servers,
            name=name,
            connect_timeout=max(1, int(connect_timeout)),
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
    except (NoServersError, OSError, TimeoutError) as exc:
        raise NatsUnavailable(
            f"no NATS server responded at {url!r} ({exc.__class__.__name__}: {exc}). "
            "Start nats-server with JetStream (-js) there, or leave nats.url unset "
            "so that stasis starts an embedded server"
        ) from exc
    return client
