"""Fixtures that start a real gateway, alone on a real NATS, with auth settings.

No scheduler or executor runs, so a submitted job stays `submitted` and no
repository URL is ever fetched.
"""

import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from libs.events import JobSubmitted, Repository, new_id
from libs.events.embedded import EmbeddedNats
from libs.events.journal import append
from services.gateway import Gateway
from tests.conftest import make_config

USER_KEY = "user-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"


def key_id(key: str) -> str:
    """Return the id the gateway gives `key`: 8 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def with_key(key: str) -> dict[str, str]:
    """Return the headers that present `key`."""
    return {"X-API-Key": key}


GatewayFactory = Callable[..., AbstractAsyncContextManager[Gateway]]


@pytest.fixture
def gateway_factory(tmp_path: Path, nats_server: EmbeddedNats) -> GatewayFactory:
    """Start gateways on `nats_server` with extra dotted-key config overrides."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Gateway]:
        config = make_config(tmp_path, **{"nats.url": nats_server.url, **overrides})
        gateway = Gateway(config)
        await gateway.start()
        try:
            yield gateway
        finally:
            await gateway.stop()

    return start


AUTH_ON = {
    "auth.enabled": True,
    "auth.api_keys": [USER_KEY, OTHER_KEY],
    "auth.admin_keys": [ADMIN_KEY],
}


@pytest.fixture
async def secured(gateway_factory: GatewayFactory) -> AsyncIterator[Gateway]:
    """A gateway with auth on: two user keys and an admin key."""
    async with gateway_factory(**AUTH_ON) as gateway:
        yield gateway


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session."""
    async with aiohttp.ClientSession() as session:
        yield session


async def add_job(gateway: Gateway, submitted_by: str | None) -> str:
    """Append a job submitted by `submitted_by` and wait until the gateway has it."""
    event = JobSubmitted(
        job_id=new_id(),
        run_id=new_id(),
        repository=Repository(url="file:///nonexistent/repo.git", branch="main"),
        submitted_by=submitted_by,
    )
    seq = await append(gateway.js, event)
    assert await gateway.projection.wait_for(seq)
    return event.job_id
