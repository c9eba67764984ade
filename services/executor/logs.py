"""Turning a step's container output into log chunks on the logs stream.

`StepLog` takes a step's output frames through four stages:

1. capture: `OutputCapture` decodes the bytes and cuts them into pieces of at
   most one line;
2. limit: a `LogBudget` shared by every step of a run counts the output bytes.
   Past its limit, the step's log gets one truncation notice, and from then on
   only the last `tail_bytes` of output are kept in a ring, sent when the step
   ends after a note of how many bytes were dropped;
3. mask: each output stream has a text and a byte `MaskingStream`;
4. batch and publish: a batch leaves when it reaches `max_batch_bytes`, when the
   stream changes, or when `flush_interval` passes. `ChunkPublisher` keeps up
   to `max_in_flight` publishes waiting for JetStream's ack, so a fast step is
   not held to one round trip per chunk. When the window is full, `write` waits,
   and the step's reader falls behind the container instead of dropping lines.

A chunk carries the raw bytes in `raw_b64` only when they differ from its text
in UTF-8 (invalid UTF-8, continuation marks), so ordinary output is sent once.
Each step attempt's log ends with a chunk with `final` set and no data.
"""

import asyncio
import base64
import binascii
import contextlib
import logging
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any, Final, Literal

from nats.js import JetStreamContext

from libs.config import ExecutorConfig
from libs.events import LogChunk, encode, subjects
from libs.telemetry.tracing import inject_trace_context

from .capture import CONTINUATION, STREAMS, CapturedText, OutputCapture, Stream
from .masking import MaskingStream, SecretMasker

log = logging.getLogger(__name__)

ChunkStream = Literal["stdout", "stderr", "system"]

DEFAULT_MAX_LOG_BYTES: Final = 64 * 1024 * 1024
"""Output bytes one run may log before its steps' logs are truncated."""

DEFAULT_TAIL_BYTES: Final = 64 * 1024
"""Bytes of the end of a truncated step's output that are kept and sent."""

DEFAULT_MAX_BATCH_BYTES: Final = 64 * 1024
DEFAULT_MAX_IN_FLIGHT: Final = 16
DEFAULT_ACK_TIMEOUT: Final = 10.0
PUBLISH_ATTEMPTS: Final = 5
"""Tries of a chunk whose ack failed or timed out, before it counts as lost."""


class LogBudget:
    """Bytes of step output that one run may still log, shared by its steps."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_LOG_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError(
                f"invalid max_log_bytes {max_bytes!r}: use 0 or more bytes"
            )
        self.max_bytes = max_bytes
        self.used = 0

    @classmethod
    def for_executor(cls, executor: ExecutorConfig) -> "LogBudget":
        """Return a budget of the configured `executor.max_log_bytes`."""
        return cls(int(executor.max_log_bytes))

    def take(self, size: int) -> bool:
        """Count `size` bytes and return True, or return False if they do not fit."""
        if self.used + size > self.max_bytes:
            return False
        self.used += size
        return True


def chunk_bytes(chunk: LogChunk) -> bytes:
    """Return the output bytes of a chunk: `raw_b64` decoded, else `data` in UTF-8.

    A `raw_b64` that is not valid base64, which only another writer could
    publish, counts as absent, so that one bad chunk cannot hide a whole log.
    """
    if chunk.raw_b64 is not None:
        with contextlib.suppress(binascii.Error):
            return base64.b64decode(chunk.raw_b64, validate=True)
    return chunk.data.encode("utf-8", "surrogateescape")


def format_size(size: int) -> str:
    """Return `size` bytes as a short binary-unit text, e.g. "64 MiB"."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


class _Batch:
    """Text and bytes of consecutive output of one stream, not yet a chunk."""

    __slots__ = ("at", "raws", "size", "stream", "texts")

    def __init__(self, stream: ChunkStream, at: float) -> None:
        self.stream = stream
        self.at = at
        self.texts: list[str] = []
        self.raws: list[bytes] = []
        self.size = 0


class _TailRing:
    """The last `limit` bytes of a truncated step's output, as whole pieces."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pieces: deque[CapturedText] = deque()
        self.size = 0
        self.dropped = 0

    def add(self, piece: CapturedText) -> None:
        self.pieces.append(piece)
        self.size += len(piece.raw)
        while self.size > self.limit:
            evicted = self.pieces.popleft()
            self.size -= len(evicted.raw)
            self.dropped += len(evicted.raw)


class ChunkPublisher:
    """Publishes a subject's chunks in order, with a bounded window of unacked ones.

    NATS processes the messages of one connection in the order they were sent,
    so pipelined chunks are stored in publish order. Each chunk has a
    `Nats-Msg-Id`, so a chunk sent again after a lost ack is stored once.
    """

    def __init__(
        self,
        js: JetStreamContext,
        subject: str,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"invalid max_in_flight {max_in_flight!r}: use at least 1")
        self._js = js
        self._subject = subject
        self._max_in_flight = max_in_flight
        self._ack_timeout = ack_timeout
        self._id_prefix = uuid.uuid4().hex
        self._window: deque[tuple[Any, bytes, str]] = deque()
        self.last_stream_seq = 0
        self.published = 0
        self.lost = 0

    async def publish(self, payload: bytes, seq: int) -> None:
        """Send one chunk, first waiting for an ack while the window is full."""
        while len(self._window) >= self._max_in_flight:
            await self._settle_oldest()
        msg_id = f"{self._id_prefix}:{seq}"
        headers = inject_trace_context({"Nats-Msg-Id": msg_id})
        if hasattr(self._js, "publish_async"):
            future = await self._js.publish_async(
                self._subject, payload, stream=subjects.LOGS_STREAM, headers=headers
            )
        else:
            # An older nats-py without publish_async: one round trip per chunk.
            future = asyncio.ensure_future(self._publish_once(payload, msg_id))
            await asyncio.wait({future})
        self._window.append((future, payload, msg_id))
        self.published += 1

    async def settle(self) -> None:
        """Wait for the ack of every chunk sent."""
        while self._window:
            await self._settle_oldest()

    async def _settle_oldest(self) -> None:
        future, payload, msg_id = self._window.popleft()
        try:
            ack = await asyncio.wait_for(future, self._ack_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ack = await self._publish_again(payload, msg_id, exc)
        if ack is not None:
            self.last_stream_seq = max(self.last_stream_seq, ack.seq)

    async def _publish_again(
        self, payload: bytes, msg_id: str, error: Exception
    ) -> Any:
        # NOTE: a chunk that was not stored at its first try is stored after the
        # chunks sent behind it. Its `seq` still shows where it belongs.
        for attempt in range(1, PUBLISH_ATTEMPTS):
            log.warning(
                "log chunk %s on %s not acked (%s); sending it again, try %d of %d",
                msg_id,
                self._subject,
                error,
                attempt + 1,
                PUBLISH_ATTEMPTS,
            )
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
            try:
                return await self._publish_once(payload, msg_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
        self.lost += 1
        log.error(
            "log chunk %s on %s lost after %d tries: %s",
            msg_id,
            self._subject,
            PUBLISH_ATTEMPTS,
            error,
        )
        return None

    async def _publish_once(self, payload: bytes, msg_id: str) -> Any:
        return await self._js.publish(
            self._subject,
            payload,
            timeout=self._ack_timeout,
            stream=subjects.LOGS_STREAM,
            headers={"Nats-Msg-Id": msg_id},
        )


class StepLog:
    """The log of one attempt of one step (or of the `_system` pseudo step)."""

    def __init__(
        self,
        js: JetStreamContext,
        job_id: str,
        run_id: str,
        step: str,
        attempt: int = 1,
        masker: SecretMasker | None = None,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        flush_interval: float = 0.02,
        *,
        budget: LogBudget | None = None,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if max_batch_bytes < 1 or tail_bytes < 0:
            raise ValueError(
                f"invalid max_batch_bytes {max_batch_bytes!r} or tail_bytes "
                f"{tail_bytes!r}: use at least 1 and 0 bytes"
            )
        self._job_id = job_id
        self._run_id = run_id
        self._step = step
        self._attempt = attempt
        self._publisher = ChunkPublisher(
            js, subjects.log_subject(job_id, run_id, step), max_in_flight
        )
        self._capture = OutputCapture()
        self._masker = masker
        self._text_masks = self._text_streams()
        self._byte_masks = self._byte_streams()
        self._budget = budget if budget is not None else LogBudget()
        self._tail_bytes = tail_bytes
        self._ring: _TailRing | None = None
        self._max_batch = max_batch_bytes
        self._interval = flush_interval
        self._batch: _Batch | None = None
        self._outbox: deque[LogChunk] = deque()
        self._send_lock = asyncio.Lock()
        self._seq = 0
        self._closed = False
        self.bytes_written = 0
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def last_stream_seq(self) -> int:
        """Stream sequence of the last chunk that JetStream acked."""
        return self._publisher.last_stream_seq

    @property
    def truncated(self) -> bool:
        """Whether the run's log limit cut this step's output."""
        return self._ring is not None

    def start(self) -> None:
        """Start the timer that sends partial batches every flush interval."""
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick())

    async def write(self, stream: Stream, data: bytes) -> None:
        """Take raw output bytes of `stream` ("stdout" or "stderr").

        Returns once every complete batch is published, or waits while too many
        publishes await their ack.
        """
        pieces = self._capture.feed(stream, data)
        if pieces:
            self._accept(stream, pieces)
        if self._outbox:
            await self._drain()

    async def note(self, text: str) -> None:
        """Write a line of the executor's own in the log, as stream "system"."""
        self._add_system(text)
        await self._drain()

    async def flush(self, partial: bool = False, final: bool = False) -> None:
        """Send what is pending; with `partial`, also an unfinished last line.

        `final` marks the end of output: an incomplete UTF-8 character at the
        very end then comes out as U+FFFD instead of waiting for its rest.
        """
        if partial:
            for piece in self._capture.flush(final=final):
                self._accept(piece.stream, [piece])
        if final:
            self._release_masks()
        self._close_batch()
        await self._drain()

    async def close(self) -> int:
        """Send everything left and the final chunk; return its stream sequence."""
        if self._ticker is not None:
            # Cancelling the timer could interrupt a publish and lose its chunk.
            self._stopping.set()
            await self._ticker
            self._ticker = None
        if self._closed:
            return self.last_stream_seq
        self._closed = True

        await self.flush(partial=True, final=True)
        if self._ring is not None:
            self._emit_tail(self._ring)
        self._close_batch()
        self._outbox.append(self._chunk("system", "", b"", final=True))
        await self._drain()
        async with self._send_lock:
            await self._publisher.settle()
        return self.last_stream_seq

    def _text_streams(self) -> dict[Stream, MaskingStream[str]] | None:
        if self._masker is None:
            return None
        return {stream: self._masker.stream() for stream in STREAMS}

    def _byte_streams(self) -> dict[Stream, MaskingStream[bytes]] | None:
        if self._masker is None:
            return None
        return {stream: self._masker.byte_stream() for stream in STREAMS}

    def _accept(self, stream: Stream, pieces: list[CapturedText]) -> None:
        """Count pieces of one stream against the budget and batch what fits."""
        if self._ring is not None:
            for piece in pieces:
                self._ring.add(piece)
            return
        if self._budget.take(sum(len(piece.raw) for piece in pieces)):
            self._add_output(stream, pieces)
            return
        for index, piece in enumerate(pieces):
            if self._budget.take(len(piece.raw)):
                self._add_output(stream, [piece])
                continue
            self._start_truncation()
            assert self._ring is not None
            for rest in pieces[index:]:
                self._ring.add(rest)
            return

    def _add_output(self, stream: Stream, pieces: list[CapturedText]) -> None:
        """Mask pieces and add them to batches of at most max_batch_bytes."""
        start = 0
        while start < len(pieces):
            if self._batch is not None and self._batch.stream != stream:
                self._close_batch()
            used = self._batch.size if self._batch is not None else 0
            end, size = start, 0
            while end < len(pieces) and (
                end == start or used + size + len(pieces[end].raw) <= self._max_batch
            ):
                size += len(pieces[end].raw)
                end += 1
            if used and used + size > self._max_batch:
                self._close_batch()
            text, raw = self._mask(stream, pieces[start:end])
            self._append(stream, text, raw, size, pieces[start].at)
            start = end

    def _mask(self, stream: Stream, group: list[CapturedText]) -> tuple[str, bytes]:
        raw = b"".join(piece.raw for piece in group)
        if self._text_masks is None or self._byte_masks is None:
            return "".join(piece.text for piece in group), raw
        texts = self._text_masks[stream]
        if not any(piece.continued for piece in group):
            text = texts.feed("".join(piece.text for piece in group))
            return text, self._byte_masks[stream].feed(raw)
        # The masker must see a long line without the continuation marks, or a
        # mark inside a secret would hide the secret.
        parts = []
        for piece in group:
            parts.append(texts.feed(piece.body))
            if piece.continued:
                parts.append(CONTINUATION)
        return "".join(parts), self._byte_masks[stream].feed(raw)

    def _release_masks(self) -> None:
        """Add the tails that the masking streams hold back, masked where needed."""
        if self._text_masks is None or self._byte_masks is None:
            return
        for stream in STREAMS:
            text = self._text_masks[stream].flush()
            raw = self._byte_masks[stream].flush()
            if text or raw:
                self._close_batch()
                self._append(stream, text, raw, len(raw), self._now())

    def _append(
        self, stream: ChunkStream, text: str, raw: bytes, size: int, at: float
    ) -> None:
        if not text and not raw:
            return
        batch = self._batch
        if batch is not None and batch.stream != stream:
            self._close_batch()
            batch = None
        if batch is None:
            batch = self._batch = _Batch(stream, at)
        batch.texts.append(text)
        batch.raws.append(raw)
        batch.size += size
        if batch.size >= self._max_batch:
            self._close_batch()

    def _close_batch(self) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        text = "".join(batch.texts)
        raw = b"".join(batch.raws)
        self._outbox.append(self._chunk(batch.stream, text, raw, at=batch.at))

    def _chunk(
        self,
        stream: ChunkStream,
        text: str,
        raw: bytes,
        *,
        at: float | None = None,
        final: bool = False,
    ) -> LogChunk:
        self._seq += 1
        encoded = text.encode("utf-8", "surrogateescape")
        return LogChunk(
            job_id=self._job_id,
            run_id=self._run_id,
            step=self._step,
            attempt=self._attempt,
            seq=self._seq,
            stream=stream,
            data=text,
            at=datetime.fromtimestamp(at if at is not None else self._now(), UTC),
            raw_b64=None if raw == encoded else base64.b64encode(raw).decode("ascii"),
            final=final,
        )

    def _add_system(self, text: str) -> None:
        line = text if text.endswith("\n") else text + "\n"
        if self._masker is not None:
            line = self._masker.mask(line)
        self._close_batch()
        self._append("system", line, line.encode("utf-8"), 0, self._now())
        self._close_batch()

    def _start_truncation(self) -> None:
        """Send what fits, then the truncation notice, and start keeping the tail."""
        self._release_masks()
        self._close_batch()
        self._ring = _TailRing(self._tail_bytes)
        self._add_system(
            f"log truncated: the run's output reached its limit of "
            f"{format_size(self._budget.max_bytes)} (executor.max_log_bytes); "
            f"output of step {self._step!r} is dropped from here, and its last "
            f"{format_size(self._tail_bytes)} follow when the step ends"
        )
        log.info(
            "run %s: log of step %s truncated at %d bytes",
            self._run_id,
            self._step,
            self._budget.max_bytes,
        )

    def _emit_tail(self, ring: _TailRing) -> None:
        """Add the kept tail after a note of how many bytes were dropped."""
        self._add_system(
            f"log tail: {ring.dropped} bytes of output of step {self._step!r} "
            f"were dropped; the last {ring.size} bytes follow"
        )
        # Fresh masking state, because the tail does not continue what the
        # masking streams saw before the cut.
        self._text_masks = self._text_streams()
        self._byte_masks = self._byte_streams()
        pieces = list(ring.pieces)
        ring.pieces.clear()
        for piece in pieces:
            self._add_output(piece.stream, [piece])
        self._release_masks()

    async def _drain(self) -> None:
        """Publish queued chunks in queue order; one caller at a time."""
        async with self._send_lock:
            while self._outbox:
                chunk = self._outbox.popleft()
                await self._publisher.publish(encode(chunk), chunk.seq)
                self.bytes_written += len(chunk.data)

    def _now(self) -> float:
        return datetime.now(UTC).timestamp()

    async def _tick(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
                return
            try:
                await self.flush(partial=True)
            except Exception:  # the next tick or close() tries again
                log.exception("sending log of step %s failed", self._step)
