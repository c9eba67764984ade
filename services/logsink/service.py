"""The logsink service: persists every log chunk to disk, exactly once.

It pulls from a durable consumer, writes each batch grouped by step file, and
acks only after the data is on disk, so a restart resumes where it stopped
without losing or repeating a chunk.
"""

import asyncio
import logging
from collections import defaultdict

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from libs.config import Config
from libs.events import LogChunk, decode_chunk, subjects
from libs.events.streams import (
    LOGSINK_CONSUMER,
    ensure_consumer,
    logsink_consumer_config,
)
from services.runtime import ServiceState, connect_jetstream

from .store import LogFileStore

log = logging.getLogger(__name__)

BATCH = 500


class LogSink:
    """Persists log chunks; see the module docstring."""

    def __init__(self, config: Config, nats_url: str | None = None) -> None:
        self.config = config
        self.state = ServiceState.CREATED
        self.store = LogFileStore(config.logs_dir)
        self._nats_url = nats_url
        self._nc: Client | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect and start persisting."""
        self.state = ServiceState.STARTING
        self._nc, js = await connect_jetstream(
            self.config, "stasis-logsink", self._nats_url
        )
        await ensure_consumer(js, subjects.LOGS_STREAM, logsink_consumer_config())
        sub = await js.pull_subscribe_bind(
            durable=LOGSINK_CONSUMER, stream=subjects.LOGS_STREAM
        )
        self._task = asyncio.create_task(self._run(sub), name="logsink")
        self.state = ServiceState.RUNNING
        log.info("logsink started, writing to %s", self.store.root)

    async def stop(self) -> None:
        """Stop pulling and disconnect; unacked chunks come back on restart."""
        self.state = ServiceState.STOPPING
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._nc is not None:
            await self._nc.close()
        self.state = ServiceState.STOPPED
        log.info("logsink stopped")

    async def _run(self, sub: object) -> None:
        while True:
            try:
                messages = await sub.fetch(BATCH, timeout=2.0)  # type: ignore[attr-defined]
            except NatsTimeoutError:
                continue
            except Exception:
                log.exception("fetching log chunks failed; retrying in 1s")
                await asyncio.sleep(1.0)
                continue
            await asyncio.to_thread(self._persist, messages)
            for msg in messages:
                await msg.ack()

    def _persist(self, messages: list[Msg]) -> None:
        groups: dict[str, list[tuple[int, LogChunk]]] = defaultdict(list)
        for msg in messages:
            try:
                chunk = decode_chunk(msg.data)
            except msgspec.ValidationError as exc:
                log.warning(
                    "skipping undecodable log chunk on %s: %s", msg.subject, exc
                )
                continue
            groups[msg.subject].append((msg.metadata.sequence.stream, chunk))
        for entries in groups.values():
            self.store.write(entries)
