"""The live stream of one job over Server-Sent Events.

The stream merges two JetStream subjects: the job's events and its log chunks.
Each SSE id is `<event seq>:<log seq>`, the stream positions reached in both,
so a client that reconnects with `Last-Event-ID` resumes exactly where it left
off, with no gap and no duplicate. A step's outcome is sent only after its
last log chunk (`last_log_seq` on the event), so readers see the whole log
before they see how the step ended.
"""

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from libs.events import RunFinished, decode_event, event_tag, subjects

from .problems import ProblemError
from .projection import Projection

log = logging.getLogger(__name__)


def parse_last_event_id(value: str | None) -> tuple[int, int]:
    """Return the (event seq, log seq) positions in a `Last-Event-ID`, or (0, 0)."""
    if not value:
        return 0, 0
    try:
        events, logs = value.split(":", 1)
        return max(0, int(events)), max(0, int(logs))
    except ValueError as exc:
        raise ProblemError(
            400,
            "Invalid Last-Event-ID",
            f"Last-Event-ID {value!r} is not '<event seq>:<log seq>'; send back "
            "the id of the last event received, or none to start from the beginning",
        ) from exc


async def _ordered(js: JetStreamContext, stream: str, subject: str, after: int) -> Any:
    return await js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=ConsumerConfig(opt_start_seq=after + 1),
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )


class JobStream:
    """One client's SSE stream of one job."""

    def __init__(
        self,
        js: JetStreamContext,
        projection: Projection,
        job_id: str,
        positions: tuple[int, int],
    ) -> None:
        self.js = js
        self.projection = projection
        self.job_id = job_id
        self.event_pos, self.log_pos = positions

    @property
    def id(self) -> str:
        """The SSE id of the position reached."""
        return f"{self.event_pos}:{self.log_pos}"

    def _finished(self) -> bool:
        job = self.projection.get(self.job_id)
        if job is None or not job.last_run.finished:
            return False
        return (
            self.event_pos >= self.projection.job_seq.get(self.job_id, 0)
            and self.log_pos >= job.last_run.last_log_seq
        )

    async def serve(self, request: web.Request, heartbeat: float) -> web.StreamResponse:
        """Send the job's events and logs to the client until the job ends."""
        headers = {"X-Accel-Buffering": "no", "Cache-Control": "no-cache"}
        async with sse_response(
            request, headers=headers, ping_interval=heartbeat
        ) as resp:
            events = await _ordered(
                self.js,
                subjects.JOBS_STREAM,
                subjects.job_subject(self.job_id),
                self.event_pos,
            )
            logs = await _ordered(
                self.js,
                subjects.LOGS_STREAM,
                subjects.job_logs_filter(self.job_id),
                self.log_pos,
            )
            try:
                await self._pump(resp, events, logs)
            except (ConnectionResetError, RuntimeError) as exc:
                log.debug("SSE client of job %s left: %s", self.job_id, exc)
            finally:
                for sub in (events, logs):
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
        return resp

    async def _pump(self, resp: EventSourceResponse, events: Any, logs: Any) -> None:
        if self._finished():
            await self._send_end(resp)
            return
        gone = asyncio.create_task(resp.wait())
        next_event = asyncio.create_task(events.next_msg(timeout=None))
        next_log = asyncio.create_task(logs.next_msg(timeout=None))
        try:
            while True:
                done, _ = await asyncio.wait(
                    {gone, next_event, next_log}, return_when=asyncio.FIRST_COMPLETED
                )
                if gone in done:
                    return
                if next_log in done:
                    await self._send_log(resp, next_log.result())
                    next_log = asyncio.create_task(logs.next_msg(timeout=None))
                if next_event in done:
                    msg = next_event.result()
                    next_event = asyncio.create_task(events.next_msg(timeout=None))
                    next_log = await self._drain_logs_for(resp, msg, logs, next_log)
                    outcome = await self._send_event(resp, msg)
                    if outcome is not None:
                        await self._send_end(resp, outcome)
                        return
        finally:
            for task in (gone, next_event, next_log):
                task.cancel()

    async def _drain_logs_for(
        self, resp: EventSourceResponse, msg: Msg, logs: Any, next_log: Any
    ) -> Any:
        try:
            wanted = getattr(decode_event(msg.data), "last_log_seq", 0)
        except msgspec.ValidationError:
            return next_log
        while self.log_pos < wanted:
            await self._send_log(resp, await next_log)
            next_log = asyncio.create_task(logs.next_msg(timeout=None))
        return next_log

    async def _send_log(self, resp: EventSourceResponse, msg: Msg) -> None:
        self.log_pos = msg.metadata.sequence.stream
        await resp.send(msg.data.decode(), id=self.id, event="log")

    async def _send_event(self, resp: EventSourceResponse, msg: Msg) -> str | None:
        """Send one job event; return the outcome when it ends the job's last run."""
        self.event_pos = msg.metadata.sequence.stream
        try:
            event = decode_event(msg.data)
        except msgspec.ValidationError:
            data = msg.data.decode(errors="replace")
            await resp.send(data, id=self.id, event="unknown")
            return None
        await resp.send(msg.data.decode(), id=self.id, event=event_tag(event))
        if not isinstance(event, RunFinished):
            return None
        job = self.projection.get(self.job_id)
        if job is not None and job.last_run.run_id != event.run_id:
            return None
        return event.outcome

    async def _send_end(
        self, resp: EventSourceResponse, status: str | None = None
    ) -> None:
        if status is None:
            job = self.projection.get(self.job_id)
            status = job.status if job else "unknown"
        body = msgspec.json.encode({"job_id": self.job_id, "status": status})
        # No id: `end` moves no position, so a client resuming from here gets
        # `end` again and nothing else.
        await resp.send(body.decode(), event="end")
