"""A scripted HTTP endpoint on loopback and helpers that publish log chunks."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from libs.events import LogChunk, encode
from libs.events.subjects import log_subject

JOB_ID = "01jobforwardtest0000000000"
RUN_ID = "01runforwardtest0000000000"

Reply = tuple[int, dict[str, str]]


@dataclass
class Received:
    """One request that the endpoint received."""

    at: float
    status: int
    batch_id: str
    idempotency_key: str
    headers: dict[str, str]
    chunks: list[dict[str, Any]]


@dataclass
class EndpointServer:
    """An aiohttp server on 127.0.0.1 whose replies follow `script`.

    `script(n)` returns the status and headers of the n-th request (from 0).
    A status of 0 keeps the request open until the server stops.
    """

    script: Callable[[int], Reply] = lambda n: (200, {})
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_post("/ingest", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/ingest"

    async def stop(self) -> None:
        """Release held requests and close the listener."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        status, headers = self.script(len(self.requests))
        self.requests.append(
            Received(
                at=time.monotonic(),
                status=status,
                batch_id=body["batch_id"],
                idempotency_key=request.headers.get("Idempotency-Key", ""),
                headers=dict(request.headers),
                chunks=body["chunks"],
            )
        )
        if status == 0:
            # Bounded, so a forgotten request cannot keep the test running.
            async with asyncio.timeout(30):
                await self._stopping.wait()
            status = 503
        return web.Response(status=status, headers=headers)

    def delivered(self) -> list[Received]:
        """Return the requests that got a 2xx response."""
        return [r for r in self.requests if 200 <= r.status < 300]

    def delivered_seqs(self) -> list[int]:
        """Return the stream sequences of every delivered chunk, repeats included."""
        return [c["stream_seq"] for r in self.delivered() for c in r.chunks]


@pytest.fixture
async def endpoint() -> AsyncIterator[Callable[..., Any]]:
    """Start scripted endpoints; every one is stopped after the test."""
    started: list[EndpointServer] = []

    async def start(script: Callable[[int], Reply] = lambda n: (200, {})) -> Any:
        server = EndpointServer(script)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


def chunk_text(step: str, index: int) -> str:
    """Return the text of the `index`-th chunk of `step`."""
    return f"{step} line {index}\n"


async def publish_chunks(
    js: Any, steps: list[str], count: int, start: int = 1, pause: float = 0.0
) -> list[int]:
    """Publish `count` chunks per step, interleaved; return their stream sequences."""
    seqs = []
    for index in range(start, start + count):
        for step in steps:
            chunk = LogChunk(
                job_id=JOB_ID,
                run_id=RUN_ID,
                step=step,
                seq=index,
                stream="stdout",
                data=chunk_text(step, index),
            )
            ack = await js.publish(log_subject(JOB_ID, RUN_ID, step), encode(chunk))
            seqs.append(ack.seq)
        if pause:
            await asyncio.sleep(pause)
    return seqs


def expected_log(step: str, count: int) -> str:
    """Return the full log file of `step` after `count` chunks."""
    return "".join(chunk_text(step, index) for index in range(1, count + 1))
