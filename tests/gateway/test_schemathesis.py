"""schemathesis against a live gateway: no 5xx, and every response fits the document.

The gateway runs alone on a real NATS in a thread of its own, because
schemathesis calls it with blocking requests. Only 127.0.0.1 is called, with a
few examples per operation and a deadline per example, so the test is bounded.
No executor runs, so the jobs it submits are never cloned.
"""

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import checks
from schemathesis.generation.case import Case

from libs.config import load_config
from libs.events.embedded import EmbeddedNats
from services.gateway import Gateway
from services.gateway.openapi import openapi_for

from .conftest import ADMIN_KEY


class GatewayThread:
    """A NATS server and a gateway on an event loop in a background thread."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.nats = EmbeddedNats(data_dir / "nats")
        self.gateway: Gateway | None = None

    def start(self) -> str:
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        return future.result(timeout=60)

    async def _start(self) -> str:
        await self.nats.start()
        config = load_config(
            environ={},
            overrides={
                "data_dir": str(self.data_dir / "data"),
                "server.port": 0,
                "nats.url": self.nats.url,
                **AUTH_SETTINGS,
            },
        )
        self.gateway = Gateway(config)
        await self.gateway.start()
        return self.gateway.url

    def stop(self) -> None:
        future = asyncio.run_coroutine_threadsafe(self._stop(), self.loop)
        future.result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()

    async def _stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()
        await self.nats.stop()


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a gateway with auth on and no rate limit."""
    running = GatewayThread(tmp_path_factory.mktemp("schemathesis"))
    url = running.start()
    assert url.startswith("http://127.0.0.1:")
    yield url
    running.stop()


AUTH_SETTINGS = {
    "auth.enabled": True,
    "auth.admin_keys": [ADMIN_KEY],
    "auth.rate_limit_per_minute": 0,
}


def document_of(settings: dict[str, object]) -> dict[str, object]:
    """Build the document a gateway with `settings` serves, without starting it."""
    config = load_config(environ={}, overrides=settings)
    return openapi_for(Gateway(config).make_app())


# NOTE: schemathesis 4.32.5's `from_fixture` reads pytest's private
# `Function._nodeid`, which pytest 9 no longer has, so the document is built
# in process here and `test_served_document_is_the_tested_one` ties it to
# the one the live gateway serves.
schema = schemathesis.openapi.from_dict(document_of(AUTH_SETTINGS))
# from_dict may change the mapping it is given, so compare with a fresh build.


def test_served_document_is_the_tested_one(live_gateway: str) -> None:
    with urllib.request.urlopen(f"{live_gateway}/api-docs/openapi.json") as answer:
        served = json.load(answer)
    assert served == json.loads(json.dumps(document_of(AUTH_SETTINGS)))


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=5_000,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@pytest.mark.timeout(240)
def test_gateway_fits_its_document(case: Case, live_gateway: str) -> None:
    # A large `min_seq` makes a read wait 10 s for a sequence that never comes.
    if case.query:
        case.query.pop("min_seq", None)
    if case.headers:
        case.headers.pop("Stasis-Min-Seq", None)
    case.call_and_validate(
        base_url=live_gateway,
        headers={"X-API-Key": ADMIN_KEY},
        excluded_checks=[
            # The handlers check rules the types do not state (URL and ref
            # patterns, pool names, depth range), so a body valid by the
            # document may still get 422.
            checks.positive_data_acceptance,
        ],
    )


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/jobs?limit=%C2%B2",
        "/api/v1/jobs/01J00000000000000000000000?min_seq=%C2%B2",
    ],
    ids=["limit", "min_seq"],
)
def test_superscript_digit_is_not_500(live_gateway: str, path: str) -> None:
    request = urllib.request.Request(
        f"{live_gateway}{path}", headers={"X-API-Key": ADMIN_KEY}
    )
    try:
        with urllib.request.urlopen(request) as answer:
            status = answer.status
    except urllib.error.HTTPError as error:
        status = error.code
    assert status < 500
