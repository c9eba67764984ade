"""The logsink service: persists every log chunk to disk, exactly once.

It pulls from a durable consumer, writes each batch grouped by step file, and
acks only after the data is on disk, so a restart resumes where it stopped
without losing or repeating a chunk. Each configured forward endpoint gets an
`EndpointForwarder` with a consumer of its own, so the files never wait for an
endpoint.
"""

import asyncio
import logging
from collections import defaultdict

import msgspec
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from libs.config import Config
from libs.events import LogChunk, decode_chunk, subjects
from libs.events.streams import (
    LOGSINK_CONSUMER,
    ensure_consumer,
    logsink_consumer_config,
)
from libs.telemetry.metrics import LogsinkMetrics
from libs.telemetry.service import ServiceTelemetry
from services.runtime import ServiceState, connect_jetstream

from .forwarder import EndpointForwarder, StreamEntry, read_stream_range, unacked_range
from .store import LogFileStore

log = logging.getLogger(__name__)

BATCH = 500
RETRY_DELAY = 1.0
"""Seconds to wait after a failed fetch or disk write before trying again."""


class LogSink:
    """Persists log chunks; see the module docstring."""

    def __init__(
        self,
        config: Config,
        nats_url: str | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.state = ServiceState.CREATED
        self.store = LogFileStore(config.logs_dir)
        self.forwarders: list[EndpointForwarder] = []
        self._nats_url = nats_url
        self._nc: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self.telemetry = ServiceTelemetry(config.telemetry, "logsink", registry)
        self.metrics = LogsinkMetrics(self.telemetry.registry)

    async def start(self) -> None:
        """Connect, persist what a previous run left unacked, then follow the stream."""
        self.state = ServiceState.STARTING
        await self.telemetry.start()
        self._nc, js = await connect_jetstream(
            self.config, "stasis-logsink", self._nats_url
        )
        await ensure_consumer(js, subjects.LOGS_STREAM, logsink_consumer_config())
        await self._persist_unacked(js)
        sub = await js.pull_subscribe_bind(
            durable=LOGSINK_CONSUMER, stream=subjects.LOGS_STREAM
        )
        self._task = asyncio.create_task(self._run(sub), name="logsink")

        for index, endpoint in enumerate(self.config.logsink.forward):
            forwarder = EndpointForwarder(index, endpoint, js, self.config.logs_dir)
            await forwarder.start()
            self.forwarders.append(forwarder)
        self.state = ServiceState.RUNNING
        log.info("logsink started, writing to %s", self.store.root)

    async def stop(self) -> None:
        """Stop pulling and disconnect; unacked chunks come back on restart."""
        self.state = ServiceState.STOPPING
        for forwarder in reversed(self.forwarders):
            await forwarder.stop()
        self.forwarders.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._nc is not None:
            await self._nc.close()
        await self.telemetry.stop()
        self.state = ServiceState.STOPPED
        log.info("logsink stopped")

    async def _persist_unacked(self, js: JetStreamContext) -> None:
        """Write the chunks that a stopped or crashed run fetched but did not ack.

        JetStream delivers them again only after `ack_wait`, later than newer
        chunks. The store would then skip them as older than its position, so
        they are read from the stream and written first.
        """
        ack_floor, delivered = await unacked_range(js, LOGSINK_CONSUMER)
        if delivered <= ack_floor:
            return
        entries = await read_stream_range(js, ack_floor + 1, delivered)
        await asyncio.to_thread(self._persist, entries)
        log.info(
            "persisted %d unacked log chunks, sequences %d to %d",
            len(entries),
            ack_floor + 1,
            delivered,
        )

    async def _run(self, sub: object) -> None:
        while True:
            try:
                messages = await sub.fetch(BATCH, timeout=2.0)  # type: ignore[attr-defined]
            except NatsTimeoutError:
                continue
            except Exception:
                log.exception("fetching log chunks failed; retrying in 1s")
                await asyncio.sleep(RETRY_DELAY)
                continue
            entries = [
                StreamEntry(msg.metadata.sequence.stream, msg.subject, msg.data)
                for msg in messages
            ]
            await self._persist_until_done(entries)
            self.metrics.persisted_bytes.inc(sum(len(e.data) for e in entries))
            for msg in messages:
                await msg.ack()

    async def _persist_until_done(self, entries: list[StreamEntry]) -> None:
        # Retrying the same batch in place keeps each file's chunks in order.
        while True:
            try:
                await asyncio.to_thread(self._persist, entries)
                return
            except OSError:
                log.exception(
                    "writing %d log chunks failed; retrying in %.0fs",
                    len(entries),
                    RETRY_DELAY,
                )
                await asyncio.sleep(RETRY_DELAY)

    def _persist(self, entries: list[StreamEntry]) -> None:
        groups: dict[str, list[tuple[int, LogChunk]]] = defaultdict(list)
        for entry in entries:
            try:
                chunk = decode_chunk(entry.data)
            except msgspec.DecodeError as exc:
                log.warning(
                    "skipping undecodable log chunk %d on %s: %s",
                    entry.seq,
                    entry.subject,
                    exc,
                )
                continue
            groups[entry.subject].append((entry.seq, chunk))
        for subject, grouped in groups.items():
            try:
                self.store.write(grouped)
            except ValueError as exc:
                # A chunk naming an id that is no valid path token has no file.
                log.warning("skipping log chunks on %s: %s", subject, exc)
