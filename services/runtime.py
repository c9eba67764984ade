"""What every Stasis service does the same way: logging, NATS set-up, lifecycle."""

import asyncio
import enum
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.js import JetStreamContext

from libs.config import Config
from libs.events import connect
from libs.events.streams import ensure_streams
from libs.secrets import SecretVault, load_or_create_key


class ServiceState(enum.Enum):
    """Where a service is in its life."""

    CREATED = "created"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


def setup_logging(level: str = "INFO") -> None:
    """Send log records of every service to stderr, one line each."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per HTTP request drowns the lifecycle lines; DEBUG brings it back.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def connect_jetstream(
    config: Config, name: str, url: str | None = None
) -> tuple[Client, JetStreamContext]:
    """Connect to NATS, make sure the streams exist and return the client pair."""
    nats_url = url or config.nats.url
    if not nats_url:
        raise RuntimeError(
            f"{name} needs nats.url (or STASIS_NATS_URL); run `stasis up` to start "
            "an embedded server with every service, or `stasis nats` for the server"
        )
    nc = await connect(nats_url, name, float(config.nats.connect_timeout))
    js = nc.jetstream(timeout=10.0)
    await ensure_streams(js, config.nats)
    return nc, js


async def open_vault(js: JetStreamContext, config: Config) -> SecretVault:
    """Open the secret vault with the configured key (created on one host)."""
    try:
        key = load_or_create_key(config.secrets.key, config.secrets_key_file)
    except ValueError as exc:
        raise RuntimeError(str(exc)) from exc
    return await SecretVault.open(
        js, key, float(config.secrets.ttl), replicas=config.nats.replicas
    )


async def run_until_signal(
    start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]
) -> None:
    """Start a service, wait for SIGINT or SIGTERM, then stop it."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await start()
    try:
        await stopping.wait()
    finally:
        await stop()
