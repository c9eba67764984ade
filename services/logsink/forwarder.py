"""Forwarding of log chunks to external HTTP endpoints, one consumer per endpoint.

Each configured endpoint gets its own durable consumer on the logs stream
(`logsink-forward-<index>`), so a slow or dead endpoint only grows its own
pending count and never holds back the log files. Chunks are POSTed as JSON
batches `{"batch_id": "<first seq>-<last seq>", "chunks": [...]}`, one batch
in flight at a time, so the endpoint receives chunks in stream order.

Delivery is at least once with a stable id: before the first attempt the
forwarder records the batch's sequence range in a state file, and after a
restart it reads that range back from the stream and sends the same batch with
the same `batch_id` and `Idempotency-Key`. A batch whose attempts run out, or
that an endpoint rejects with a 4xx other than 408 and 429, is appended to
`<logs dir>/dead-letter/<index>.jsonl`.
"""

import asyncio
import contextlib
import email.utils
import json
import logging
import os
import random
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from nats.aio.msg import Msg
from nats.errors import MsgAlreadyAckdError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from libs.config import ForwardEndpoint
from libs.events import decode_chunk, subjects
from libs.events.streams import ensure_consumer
from libs.telemetry.tracing import log_batch_span

log = logging.getLogger(__name__)

FETCH_POLL = 1.0
"""Seconds one fetch waits for the first chunk of an empty batch."""
MAX_RETRY_AFTER = 3600.0
"""Longest Retry-After, in seconds, that a 429 response can impose."""
RETRY_DELAY = 1.0
"""Seconds to wait after a NATS or disk error before trying again."""


def forward_consumer_name(index: int) -> str:
    """Return the durable consumer name of the endpoint at `index`."""
    return f"logsink-forward-{index}"


def forward_consumer_config(index: int) -> ConsumerConfig:
    """Return the durable consumer of one endpoint over every log chunk."""
    return ConsumerConfig(
        durable_name=forward_consumer_name(index),
        filter_subject=subjects.ALL_LOGS,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=60.0,
        max_deliver=-1,
        max_ack_pending=50_000,
    )


@dataclass(frozen=True)
class StreamEntry:
    """One message of the logs stream: its sequence, subject and payload."""

    seq: int
    subject: str
    data: bytes


async def read_stream_range(
    js: JetStreamContext, first: int, last: int
) -> list[StreamEntry]:
    """Read the logs stream from `first` to `last` inclusive, skipping gaps.

    A restarted consumer gets new messages at once, but it gets the unacked
    ones of the crashed process only after `ack_wait`. Reading them directly
    lets the caller handle them first, so stream order is kept.
    """
    entries = []
    for seq in range(first, last + 1):
        try:
            raw = await js.get_msg(subjects.LOGS_STREAM, seq)
        except NotFoundError:
            continue  # removed by max_age or max_bytes
        entries.append(StreamEntry(seq, raw.subject or "", raw.data or b""))
    return entries


async def unacked_range(js: JetStreamContext, durable: str) -> tuple[int, int]:
    """Return (ack floor, last delivered) stream sequences of a durable consumer."""
    info = await js.consumer_info(subjects.LOGS_STREAM, durable)
    ack_floor = info.ack_floor.stream_seq if info.ack_floor else 0
    delivered = info.delivered.stream_seq if info.delivered else 0
    return ack_floor or 0, delivered or 0


class TokenBucket:
    """A token bucket with a capacity of one token, refilled at `rate` per second.

    Because the capacity is one, any window of one second contains at most
    `rate` + 1 requests, and a burst never exceeds one request.
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"invalid rate_limit_per_second {rate!r}: must be above 0")
        self.rate = rate
        self._tokens = 1.0
        self._updated = time.monotonic()

    async def acquire(self) -> None:
        """Wait until a token is available and take it."""
        while True:
            now = time.monotonic()
            self._tokens = min(1.0, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            await asyncio.sleep((1.0 - self._tokens) / self.rate)


def backoff_delay(
    failures: int, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Return the full-jitter delay after `failures` failed attempts (from 1).

    The delay is uniform between 0 and min(cap, base * 2 ** (failures - 1)).
    """
    ceiling = min(cap, base * 2 ** (failures - 1))
    return (rng or random).uniform(0.0, ceiling)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Return the seconds of a Retry-After header (delay or HTTP date), or None."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def redact_url(url: str) -> str:
    """Return `url` without user info, query or fragment, which may hold secrets."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass
class Batch:
    """Encoded chunks of consecutive stream sequences, sent as one request."""

    first_seq: int = 0
    last_seq: int = 0
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    messages: list[Msg] = field(default_factory=list)
    """Messages to ack once the batch is delivered or dead-lettered."""

    @property
    def batch_id(self) -> str:
        """The idempotency id: the first and last stream sequence it covers."""
        return f"{self.first_seq}-{self.last_seq}"

    @property
    def empty(self) -> bool:
        """Whether the batch covers no stream sequence yet."""
        return self.first_seq == 0

    def add(self, seq: int, chunk: bytes | None, message: Msg | None) -> None:
        """Add one stream sequence; `chunk` is None for an undecodable message."""
        if self.empty:
            self.first_seq = seq
        self.last_seq = seq
        if chunk is not None:
            self.chunks.append(chunk)
            self.size += len(chunk) + 1
        if message is not None:
            self.messages.append(message)

    def fits(self, chunk: bytes | None, endpoint: ForwardEndpoint) -> bool:
        """Return whether `chunk` fits the count and byte limits.

        The first chunk of a batch always fits, so an oversized chunk goes alone.
        """
        if self.empty or chunk is None:
            return True
        return (
            len(self.chunks) < endpoint.batch_max_chunks
            and self.size + len(chunk) + 1 <= endpoint.batch_max_bytes
        )

    def body(self) -> bytes:
        """Return the JSON request body."""
        batch_id = json.dumps(self.batch_id).encode()
        chunks = b",".join(self.chunks)
        return b'{"batch_id":' + batch_id + b',"chunks":[' + chunks + b"]}"


def encode_chunk(seq: int, data: bytes) -> bytes | None:
    """Return a chunk as forwarded JSON with its stream sequence, or None if invalid."""
    try:
        chunk = decode_chunk(data)
    except msgspec.DecodeError as exc:
        log.warning("not forwarding undecodable log chunk %d: %s", seq, exc)
        return None
    fields = msgspec.to_builtins(chunk)
    fields["stream_seq"] = seq
    return msgspec.json.encode(fields)


class ForwardState(msgspec.Struct, kw_only=True):
    """A forwarder's progress, kept on disk between runs."""

    sent_through: int = 0
    """Highest stream sequence whose batch was delivered or dead-lettered."""
    in_flight: tuple[int, int] | None = None
    """First and last sequence of the batch being sent, if any."""


class StateFile:
    """The forwarder's state file, replaced atomically on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> ForwardState:
        """Read the state; a missing file is the state of a new endpoint."""
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=ForwardState)
        except FileNotFoundError:
            return ForwardState()
        except msgspec.DecodeError as exc:
            raise RuntimeError(
                f"invalid forwarder state file {str(self.path)!r}: {exc}; delete it "
                "to resend from the consumer's ack floor"
            ) from exc

    def save(self, state: ForwardState) -> None:
        """Write the state and fsync it before it replaces the old file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "wb") as state_file:
            state_file.write(msgspec.json.encode(state))
            state_file.flush()
            os.fsync(state_file.fileno())
        os.replace(temporary, self.path)


def append_dead_letter(path: Path, line: bytes) -> None:
    """Append one JSON line to a dead-letter file and fsync it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as dead_letters:
        dead_letters.write(line + b"\n")
        dead_letters.flush()
        os.fsync(dead_letters.fileno())


class _Retryable(Exception):
    """An attempt failed in a way that a later attempt may not."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Rejected(Exception):
    """The endpoint rejected the batch; sending it again would not help."""


class EndpointForwarder:
    """Sends every log chunk to one endpoint; see the module docstring."""

    def __init__(
        self,
        index: int,
        endpoint: ForwardEndpoint,
        js: JetStreamContext,
        logs_dir: str | os.PathLike[str],
        rng: random.Random | None = None,
    ) -> None:
        self.index = index
        self.endpoint = endpoint
        self.url = redact_url(endpoint.url)
        self.durable = forward_consumer_name(index)
        self.dead_letter_path = Path(logs_dir) / "dead-letter" / f"{index}.jsonl"
        self._state_file = StateFile(Path(logs_dir) / "forward-state" / f"{index}.json")
        self._state = ForwardState()
        self._js = js
        self._rng = rng or random.Random()
        self._bucket = TokenBucket(endpoint.rate_limit_per_second)
        self._session: aiohttp.ClientSession | None = None
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None
        self._carry: list[tuple[int, bytes | None, Msg]] = []
        self._taken_through = 0

    async def start(self) -> None:
        """Create the consumer, recover an interrupted batch and start sending."""
        self._state = await asyncio.to_thread(self._state_file.load)
        await ensure_consumer(
            self._js, subjects.LOGS_STREAM, forward_consumer_config(self.index)
        )
        self._sub = await self._js.pull_subscribe_bind(
            durable=self.durable, stream=subjects.LOGS_STREAM
        )
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.endpoint.timeout)
        )
        self._task = asyncio.create_task(self._run(), name=self.durable)
        log.info("forwarding log chunks to endpoint %d (%s)", self.index, self.url)

    async def stop(self) -> None:
        """Stop sending; a batch cut short is sent again, with its id, on restart."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._sub is not None:
            await self._sub.unsubscribe()
        log.info("stopped forwarding to endpoint %d (%s)", self.index, self.url)

    async def _run(self) -> None:
        pending: list[Batch] | None = None
        while True:
            try:
                if pending is None:
                    pending = await self._recover()
                if not pending:
                    pending.append(await self._collect())
                await self._deliver(pending[0])
                pending.pop(0)
            except Exception:
                # The batch stays pending, so the next try keeps its id and order.
                log.exception(
                    "endpoint %d: forwarding failed; retrying in %.0fs",
                    self.index,
                    RETRY_DELAY,
                )
                await asyncio.sleep(RETRY_DELAY)

    async def _recover(self) -> list[Batch]:
        """Rebuild the batches that a previous run fetched but did not finish."""
        ack_floor, delivered = await unacked_range(self._js, self.durable)
        stream = await self._js.stream_info(subjects.LOGS_STREAM)
        if self._state.sent_through > stream.state.last_seq:
            log.warning(
                "endpoint %d: state file is past the stream's last sequence %d "
                "(stream recreated?); forwarding from the consumer's ack floor",
                self.index,
                stream.state.last_seq,
            )
            self._state = ForwardState()
        first = max(ack_floor, self._state.sent_through) + 1
        in_flight = self._state.in_flight
        last = max(delivered, in_flight[1] if in_flight else 0)
        self._taken_through = max(last, self._state.sent_through)
        if first > last:
            return []
        entries = await read_stream_range(self._js, first, last)
        log.info(
            "endpoint %d: resending %d unfinished chunks, sequences %d to %d",
            self.index,
            len(entries),
            first,
            last,
        )
        return self._split(entries, in_flight)

    def _split(
        self, entries: list[StreamEntry], in_flight: tuple[int, int] | None
    ) -> list[Batch]:
        before: list[Batch] = [Batch()]
        interrupted = Batch()
        after: list[Batch] = [Batch()]
        for entry in entries:
            chunk = encode_chunk(entry.seq, entry.data)
            if in_flight is not None and in_flight[0] <= entry.seq <= in_flight[1]:
                interrupted.add(entry.seq, chunk, None)
                continue
            batches = before if in_flight and entry.seq < in_flight[0] else after
            if not batches[-1].fits(chunk, self.endpoint):
                batches.append(Batch())
            batches[-1].add(entry.seq, chunk, None)
        if in_flight is not None:
            # The id names the recorded range even if its ends left the stream.
            interrupted.first_seq, interrupted.last_seq = in_flight
        return [batch for batch in (*before, interrupted, *after) if not batch.empty]

    async def _collect(self) -> Batch:
        """Fetch chunks until the batch is full or `flush_interval` has passed."""
        batch = Batch()
        deadline: float | None = None
        full = False
        while not full:
            while self._carry and not full:
                seq, chunk, msg = self._carry[0]
                full = not batch.fits(chunk, self.endpoint)
                if not full:
                    batch.add(seq, chunk, msg)
                    self._carry.pop(0)
            if full:
                break
            if not batch.empty and deadline is None:
                deadline = time.monotonic() + self.endpoint.flush_interval
            wait = FETCH_POLL if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                break
            await self._fetch_into_carry(
                max(1, self.endpoint.batch_max_chunks - len(batch.chunks)), wait
            )
        return batch

    async def _fetch_into_carry(self, count: int, wait: float) -> None:
        try:
            messages = await self._sub.fetch(count, timeout=max(wait, 0.05))
        except NatsTimeoutError:
            return
        except Exception:
            log.exception(
                "endpoint %d: fetching log chunks failed; retrying in %.0fs",
                self.index,
                RETRY_DELAY,
            )
            await asyncio.sleep(RETRY_DELAY)
            return
        for msg in messages:
            seq = msg.metadata.sequence.stream
            if seq <= self._state.sent_through:
                await msg.ack()  # a redelivery of a finished batch
            elif seq > self._taken_through:
                self._taken_through = seq
                self._carry.append((seq, encode_chunk(seq, msg.data), msg))
            # Otherwise it is a redelivery of a chunk still held in a batch,
            # which is acked when that batch is finished.

    async def _deliver(self, batch: Batch) -> None:
        """Send a batch until it is delivered or dead-lettered, then ack it."""
        if batch.last_seq > self._state.sent_through:
            self._state.in_flight = (batch.first_seq, batch.last_seq)
            await asyncio.to_thread(self._state_file.save, self._state)

            with log_batch_span(batch.messages, self.index, batch.batch_id):
                failure = await self._send(batch)
            if failure is not None:
                await self._dead_letter(batch, failure)

            self._state = ForwardState(sent_through=batch.last_seq)
            await asyncio.to_thread(self._state_file.save, self._state)

        for msg in batch.messages:
            with contextlib.suppress(MsgAlreadyAckdError):
                await msg.ack()

    async def _send(self, batch: Batch) -> tuple[int, str] | None:
        """Try a batch up to `max_attempts` times; return (tries, error) on failure."""
        body = batch.body()
        attempts = max(1, self.endpoint.max_attempts)
        for attempt in range(1, attempts + 1):
            await self._bucket.acquire()
            try:
                await self._post(batch.batch_id, body)
                log.debug(
                    "endpoint %d: batch %s delivered on attempt %d",
                    self.index,
                    batch.batch_id,
                    attempt,
                )
                return None
            except _Rejected as exc:
                return attempt, str(exc)
            except _Retryable as exc:
                if attempt == attempts:
                    return attempt, str(exc)
                delay = exc.retry_after
                if delay is None:
                    delay = backoff_delay(
                        attempt,
                        self.endpoint.retry_base,
                        self.endpoint.retry_max,
                        self._rng,
                    )
                log.warning(
                    "endpoint %d: batch %s attempt %d of %d failed (%s); "
                    "retrying in %.2fs",
                    self.index,
                    batch.batch_id,
                    attempt,
                    attempts,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
        return attempts, "no attempt made"

    async def _post(self, batch_id: str, body: bytes) -> None:
        assert self._session is not None
        headers = {
            **self.endpoint.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": batch_id,
        }
        try:
            async with self._session.post(
                self.endpoint.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            return
        if status == 429:
            raise _Retryable("HTTP 429", parse_retry_after(retry_after))
        if status == 408 or status >= 500:
            raise _Retryable(f"HTTP {status}")
        raise _Rejected(f"HTTP {status}")

    async def _dead_letter(self, batch: Batch, failure: tuple[int, str]) -> None:
        attempts, error = failure
        record = {
            "batch_id": batch.batch_id,
            "endpoint": self.index,
            "url": self.url,
            "attempts": attempts,
            "error": error,
            "dead_lettered_at": datetime.now(UTC).isoformat(),
            "chunks": [msgspec.Raw(chunk) for chunk in batch.chunks],
        }
        line = msgspec.json.encode(record)
        await asyncio.to_thread(append_dead_letter, self.dead_letter_path, line)
        log.warning(
            "endpoint %d (%s): batch %s dead-lettered after %d attempts (%s); "
            "its %d chunks are in %s",
            self.index,
            self.url,
            batch.batch_id,
            attempts,
            error,
            len(batch.chunks),
            self.dead_letter_path,
        )
