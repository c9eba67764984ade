"""The live stream of one job over Server-Sent Events.

The stream merges two JetStream subjects: the job's events and its log chunks.
Each SSE id is `<event seq>:<log seq>`, the stream positions reached in both,
so a client that reconnects with `Last-Event-ID` resumes exactly where it left
off, with no gap and no duplicate. A step's outcome is sent only after its
last log chunk (`last_log_seq` on the event), so readers see the whole log
before they see how the step ended.

Log chunks are sent as `log` events. The last chunk of each step attempt has
`final` set and no data, so it marks the end of that step's log, and it comes
before the step's `step.finished`. A comment line goes out every heartbeat
interval. The stream notices a
client that left within DISCONNECT_POLL seconds, and then deletes both of its
consumers.
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
from nats.js.errors import APIError

from libs.events import RunFinished, decode_event, event_tag, subjects

from .problems import ProblemError
from .projection import Projection

log = logging.getLogger(__name__)

DISCONNECT_POLL = 0.5
"""Seconds between checks of whether an SSE client closed its connection.

The gateway does not cancel a handler when its client leaves, and without a
check the stream would notice only at its next write, up to a heartbeat later.
"""
CONSUMER_INACTIVE_THRESHOLD = 10.0
"""Seconds after which the server removes a consumer that no one reads.

A backstop for a gateway that dies without deleting its consumers.
"""
RELEASE_TIMEOUT = 2.0
"""Seconds that unsubscribing and deleting one consumer may take."""


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
        config=ConsumerConfig(
            opt_start_seq=after + 1, inactive_threshold=CONSUMER_INACTIVE_THRESHOLD
        ),
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
        subscriptions: list[tuple[str, Any]] = []
        try:
            # Subscribe before the response starts, so that a rejection can still
            # get a status code.
            events, logs = await self._subscribe(subscriptions)
            async with sse_response(
                request, headers=headers, ping_interval=heartbeat
            ) as resp:
                try:
                    await self._pump(request, resp, events, logs)
                except (ConnectionResetError, RuntimeError, TimeoutError) as exc:
                    log.debug("SSE client of job %s left: %s", self.job_id, exc)
        finally:
            await asyncio.shield(self._release(subscriptions))
        return resp

    async def _subscribe(self, subscriptions: list[tuple[str, Any]]) -> tuple[Any, Any]:
        """Create the two ordered consumers of this stream, or raise a 503 problem."""
        try:
            events = await _ordered(
                self.js,
                subjects.JOBS_STREAM,
                subjects.job_subject(self.job_id),
                self.event_pos,
            )
            subscriptions.append((subjects.JOBS_STREAM, events))
            logs = await _ordered(
                self.js,
                subjects.LOGS_STREAM,
                subjects.job_logs_filter(self.job_id),
                self.log_pos,
            )
            subscriptions.append((subjects.LOGS_STREAM, logs))
        except APIError as exc:
            log.warning(
                "NATS rejected the SSE consumers of job %s: %s", self.job_id, exc
            )
            raise ProblemError(
                503,
                "Stream unavailable",
                f"NATS refused a consumer for the live stream of job {self.job_id} "
                f"({exc.description}); retry shortly, or raise the server's consumer "
                "limit if many clients follow jobs at once",
            ) from exc
        return events, logs

    async def _release(self, subscriptions: list[tuple[str, Any]]) -> None:
        """Unsubscribe and delete the consumers, so that none outlives the client."""
        for stream, sub in subscriptions:
            try:
                async with asyncio.timeout(RELEASE_TIMEOUT):
                    info = await sub.consumer_info()
                    await sub.unsubscribe()
                    await self.js.delete_consumer(stream, info.name)
            except Exception as exc:
                # The inactive threshold removes the consumer later.
                log.debug("releasing a consumer on %s failed: %s", stream, exc)
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _pump(
        self, request: web.Request, resp: EventSourceResponse, events: Any, logs: Any
    ) -> None:
        if self._finished():
            await self._send_end(resp)
            return
        client_left = asyncio.create_task(_wait_client_left(request, resp))
        next_event = asyncio.create_task(events.next_msg(timeout=None))
        next_log = asyncio.create_task(logs.next_msg(timeout=None))
        try:
            while True:
                done, _ = await asyncio.wait(
                    {client_left, next_event, next_log},
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if client_left in done:
                    return
                if next_log in done:
                    await self._send_log(resp, next_log.result())
                    next_log = asyncio.create_task(logs.next_msg(timeout=None))
                if next_event in done:
                    msg = next_event.result()
                    next_event = asyncio.create_task(events.next_msg(timeout=None))
                    next_log = await self._drain_logs_for(
                        resp, msg, logs, next_log, client_left
                    )
                    if next_log is None:
                        return
                    outcome = await self._send_event(resp, msg)
                    if outcome is not None:
                        await self._send_end(resp, outcome)
                        return
        finally:
            for task in (client_left, next_event, next_log):
                if task is not None:
                    task.cancel()
            await asyncio.gather(client_left, next_event, return_exceptions=True)
            if next_log is not None:
                await asyncio.gather(next_log, return_exceptions=True)

    async def _drain_logs_for(
        self,
        resp: EventSourceResponse,
        msg: Msg,
        logs: Any,
        next_log: Any,
        client_left: asyncio.Task[None],
    ) -> Any:
        """Send the log chunks an event's `last_log_seq` names before the event.

        Returns the pending read of the next chunk, or None when the client left.
        """
        try:
            last_log_seq = getattr(decode_event(msg.data), "last_log_seq", 0)
        except msgspec.ValidationError:
            return next_log
        while self.log_pos < last_log_seq:
            # NOTE: a chunk that the logs stream dropped (nats.logs_max_age or
            # logs_max_bytes) is skipped, but the event waits while no later
            # chunk of the job exists.
            await asyncio.wait(
                {next_log, client_left}, return_when=asyncio.FIRST_COMPLETED
            )
            if client_left.done():
                next_log.cancel()
                await asyncio.gather(next_log, return_exceptions=True)
                return None
            await self._send_log(resp, next_log.result())
            next_log = asyncio.create_task(logs.next_msg(timeout=None))
        return next_log

    async def _send_log(self, resp: EventSourceResponse, msg: Msg) -> None:
        self.log_pos = msg.metadata.sequence.stream
        await resp.send(msg.data.decode(errors="replace"), id=self.id, event="log")

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


async def _wait_client_left(request: web.Request, resp: EventSourceResponse) -> None:
    """Return once the client has closed its connection or a write has failed."""
    while True:
        transport = request.transport
        if transport is None or transport.is_closing() or not resp.is_connected():
            return
        await asyncio.sleep(DISCONNECT_POLL)
