"""Appending to and reading from a job's event subject.

Every writer goes through `append`, which encodes the event, sets the headers
that make the stream a safe log (message id for deduplication, expected last
subject sequence for optimistic concurrency) and returns the stream sequence.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime

import msgspec
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from . import subjects
from .errors import StreamConflict
from .types import AnyEvent, decode_event, encode, event_tag

log = logging.getLogger(__name__)

EVENT_TYPE_HEADER = "Stasis-Event-Type"
_WRONG_LAST_SEQUENCE = 10071


class StoredEvent(msgspec.Struct, frozen=True):
    """An event with its position and time in the job-events stream."""

    seq: int
    event: AnyEvent
    stored_at: datetime | None = None


async def append(
    js: JetStreamContext,
    event: AnyEvent,
    *,
    msg_id: str | None = None,
    expected_last_seq: int | None = None,
    headers: dict[str, str] | None = None,
) -> int:
    """Append `event` to its job's subject and return its stream sequence.

    `msg_id` makes a repeated append within the duplicate window a no-op that
    returns the first sequence. `expected_last_seq` makes the append fail with
    StreamConflict unless the job's last event is at that sequence (0: none).
    """
    all_headers = {EVENT_TYPE_HEADER: event_tag(event)}
    if headers:
        all_headers.update(headers)
    if msg_id is not None:
        all_headers["Nats-Msg-Id"] = msg_id
    if expected_last_seq is not None:
        all_headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_seq)

    try:
        ack = await js.publish(
            subjects.job_subject(event.job_id),
            encode(event),
            stream=subjects.JOBS_STREAM,
            headers=all_headers,
        )
    except APIError as exc:
        if exc.err_code == _WRONG_LAST_SEQUENCE:
            raise StreamConflict(
                f"job {event.job_id} changed since sequence {expected_last_seq}; "
                f"{event_tag(event)} was not appended"
            ) from exc
        raise
    return ack.seq


async def last_seq(js: JetStreamContext, job_id: str) -> int:
    """Return the stream sequence of the job's last event, or 0 if it has none."""
    try:
        msg = await js.get_last_msg(subjects.JOBS_STREAM, subjects.job_subject(job_id))
    except NotFoundError:
        return 0
    return msg.seq or 0


async def read_job(js: JetStreamContext, job_id: str) -> list[StoredEvent]:
    """Return every stored event of one job, oldest first."""
    last = await last_seq(js, job_id)
    if last == 0:
        return []
    events: list[StoredEvent] = []
    async for stored in follow(js, subjects.job_subject(job_id)):
        events.append(stored)
        if stored.seq >= last:
            break
    return events


async def follow(
    js: JetStreamContext,
    subject: str = subjects.ALL_JOBS,
    start_seq: int = 1,
) -> AsyncIterator[StoredEvent]:
    """Yield the events on `subject` from `start_seq` on, then live, forever.

    Uses an ordered push consumer, the fastest way nats-py replays a stream; it
    recreates itself after a gap or a reconnect, so nothing is skipped. An event
    that does not decode is logged and skipped.
    """
    sub = await js.subscribe(
        subject,
        stream=subjects.JOBS_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=ConsumerConfig(opt_start_seq=max(1, start_seq)),
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
    try:
        while True:
            msg = await sub.next_msg(timeout=None)
            meta = msg.metadata
            try:
                event = decode_event(msg.data)
            except msgspec.ValidationError as exc:
                log.warning(
                    "skipping undecodable event at %s seq %d: %s",
                    msg.subject,
                    meta.sequence.stream,
                    exc,
                )
                continue
            yield StoredEvent(meta.sequence.stream, event, meta.timestamp)
    finally:
        try:
            await sub.unsubscribe()
        except Exception as exc:
            log.debug("unsubscribe of %s failed: %s", subject, exc)


async def sleep_backoff(attempt: int, base: float = 0.2, cap: float = 5.0) -> None:
    """Sleep before retry number `attempt` (from 1), doubling up to `cap` seconds."""
    await asyncio.sleep(min(cap, base * 2 ** (attempt - 1)))
