"""Turning a step's container output into log chunks on the logs stream.

Output is decoded and split by `OutputCapture`, masked, and sent in batches:
a batch leaves when it reaches `max_batch_bytes` or when `flush_interval`
passes, whichever comes first. Publishing awaits JetStream's ack, and `write`
waits while too much is unsent, so a step that prints faster than NATS takes
is slowed down rather than losing lines.
"""

import asyncio
import contextlib
import logging

from nats.js import JetStreamContext

from libs.events import LogChunk, encode, subjects

from .capture import CapturedText, OutputCapture, Stream
from .masking import SecretMasker

log = logging.getLogger(__name__)


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
        max_batch_bytes: int = 64 * 1024,
        flush_interval: float = 0.02,
    ) -> None:
        self._js = js
        self._job_id = job_id
        self._run_id = run_id
        self._step = step
        self._attempt = attempt
        self._subject = subjects.log_subject(job_id, run_id, step)
        self._capture = OutputCapture()
        self._maskers = {
            name: masker.stream() if masker else None
            for name in ("stdout", "stderr", "system")
        }
        self._masker = masker
        self._max_batch = max_batch_bytes
        self._interval = flush_interval
        self._pending: list[tuple[str, str]] = []
        self._pending_bytes = 0
        self._lock = asyncio.Lock()
        self._seq = 0
        self.last_stream_seq = 0
        self.bytes_written = 0
        self._ticker: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the timer that sends partial batches every flush interval."""
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick())

    async def write(self, stream: Stream, data: bytes) -> None:
        """Take raw output bytes of `stream` ("stdout" or "stderr")."""
        for piece in self._capture.feed(stream, data):
            self._add(piece)
        if self._pending_bytes >= self._max_batch:
            await self.flush()

    async def note(self, text: str) -> None:
        """Write a line of the executor's own in the log, as stream "system"."""
        line = text if text.endswith("\n") else text + "\n"
        self._add_text("system", line)
        await self.flush()

    async def flush(self, partial: bool = False, final: bool = False) -> None:
        """Send what is pending; with `partial`, also an unfinished last line.

        `final` marks the end of output: an incomplete UTF-8 character at the
        very end then comes out as U+FFFD instead of waiting for its rest.
        """
        async with self._lock:
            if partial:
                for piece in self._capture.flush(final=final):
                    self._add(piece)
                for name, state in self._maskers.items():
                    if state is not None:
                        held = state.flush()
                        if held:
                            self._pending.append((name, held))
            batches = self._take_batches()
            for stream, text in batches:
                await self._publish(stream, text)

    async def close(self) -> int:
        """Send everything left and return the last chunk's stream sequence."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self.flush(partial=True, final=True)
        return self.last_stream_seq

    def _add(self, piece: CapturedText) -> None:
        self._add_text(piece.stream, piece.text)

    def _add_text(self, stream: str, text: str) -> None:
        state = self._maskers.get(stream)
        if state is not None:
            text = state.feed(text)
        if not text:
            return
        last = self._pending[-1] if self._pending else None
        if last and last[0] == stream and len(last[1]) + len(text) <= self._max_batch:
            self._pending[-1] = (stream, last[1] + text)
        else:
            self._pending.append((stream, text))
        self._pending_bytes += len(text)

    def _take_batches(self) -> list[tuple[str, str]]:
        batches, self._pending, self._pending_bytes = self._pending, [], 0
        return batches

    async def _publish(self, stream: str, text: str) -> None:
        self._seq += 1
        chunk = LogChunk(
            job_id=self._job_id,
            run_id=self._run_id,
            step=self._step,
            attempt=self._attempt,
            seq=self._seq,
            stream=stream,  # type: ignore[arg-type]
            data=text,
        )
        ack = await self._js.publish(
            self._subject, encode(chunk), stream=subjects.LOGS_STREAM
        )
        self.last_stream_seq = ack.seq
        self.bytes_written += len(text)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush(partial=True)
            except Exception:  # the next tick or close() tries again
                log.exception("sending log of step %s failed", self._step)
