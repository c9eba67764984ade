"""Appending to and reading from a job's event subject.

Every writer goes through `append`, which encodes the event, sets the headers
that make the stream a safe log (message id for deduplication, expected last
subject sequence for optimistic concurrency) and returns the stream sequence.
`append` also chains each event to the job's previous stored message with
`prev_hash`, so that `libs.events.audit` can tell a removed, reordered or
altered event.
"""

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator
from datetime import datetime

import msgspec
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from . import subjects
from .errors import StreamConflict
from .types import AnyEvent, decode_event, encode, event_tag

log = logging.getLogger(__name__)

EVENT_TYPE_HEADER = "Stasis-Event-Type"
_WRONG_LAST_SEQUENCE = 10071
APPEND_ATTEMPTS = 8
OUTAGE_RETRY_SECONDS = 30.0
"""How long an append with a message id is tried again while NATS is away."""
TRANSIENT_ERRORS = (NatsTimeoutError, NoRespondersError, ConnectionClosedError)
"""Reads and appends an unguarded `append` tries before it raises StreamConflict."""


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
    """Append `event` to its job's subject, chained to the last one; return its seq.

    The stored event carries `prev_hash`, the SHA-256 of the job's last stored
    message, and is published with that message's sequence as the expected
    last subject sequence, so two writers cannot both append after the same
    event. When another writer wins, the read and the append are tried again,
    up to `APPEND_ATTEMPTS` times in all.

    `msg_id` makes a repeated append within the duplicate window a no-op that
    returns the first sequence. `expected_last_seq` makes the append fail with
    StreamConflict unless the job's last event is at that sequence (0: none);
    such an append is never retried.
    """
    # NATS may be briefly away (a restart, a node loss). With a message id a
    # repeat is stored once, so the append is tried again for a bounded time;
    # without one a repeat could store the event twice, so the error is raised.
    deadline = time.monotonic() + OUTAGE_RETRY_SECONDS
    delay = 0.2
    while True:
        try:
            return await _append_once(
                js,
                event,
                msg_id=msg_id,
                expected_last_seq=expected_last_seq,
                headers=headers,
            )
        except TRANSIENT_ERRORS as exc:
            if msg_id is None or time.monotonic() >= deadline:
                raise
            log.warning(
                "append of %s to job %s failed (%s: %s); trying again with the "
                "same message id",
                event_tag(event),
                event.job_id,
                type(exc).__name__,
                exc,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _append_once(
    js: JetStreamContext,
    event: AnyEvent,
    *,
    msg_id: str | None,
    expected_last_seq: int | None,
    headers: dict[str, str] | None,
) -> int:
    # Cost of the chain, measured with `python -m tests.scaling.bench_append`
    # (nats-server 2.15.1 on loopback, 2 cores, p50 of awaited appends over
    # three runs). One writer on one job: 0.21-0.30 ms before, 0.46-0.56 ms
    # with the chain. 100 writers on 100 jobs: 3.3-4.5 ms before, 7.8-8.9 ms
    # with it (10-12k instead of 22-30k appends/s). Every append first reads
    # the job's last message, which is the extra round trip.
    subject = subjects.job_subject(event.job_id)
    base_headers = {EVENT_TYPE_HEADER: event_tag(event)}
    if headers:
        base_headers.update(headers)
    if msg_id is not None:
        base_headers["Nats-Msg-Id"] = msg_id

    for attempt in range(1, APPEND_ATTEMPTS + 1):
        # A replica that lags may reply to a direct get. After a lost race,
        # read from the stream leader instead.
        last_seq_now, prev_hash = await _chain_head(js, subject, direct=attempt == 1)
        if expected_last_seq is not None and last_seq_now < expected_last_seq:
            # The caller has seen a newer event than the replica that replied,
            # and prev_hash must name that event, so read from the leader.
            last_seq_now, prev_hash = await _chain_head(js, subject, direct=False)
        expected = last_seq_now if expected_last_seq is None else expected_last_seq
        chained = msgspec.structs.replace(event, prev_hash=prev_hash)
        seq = await _publish_guarded(js, chained, base_headers, expected)
        if seq is not None:
            return seq
        if expected_last_seq is not None:
            raise StreamConflict(
                f"job {event.job_id} changed since sequence {expected_last_seq}; "
                f"{event_tag(event)} was not appended"
            )
        log.debug(
            "append of %s to job %s lost a race (attempt %d); reading again",
            event_tag(event),
            event.job_id,
            attempt,
        )
        await asyncio.sleep(random.uniform(0, 0.005 * attempt))
    raise StreamConflict(
        f"job {event.job_id} kept changing during {APPEND_ATTEMPTS} attempts; "
        f"{event_tag(event)} was not appended"
    )


async def _publish_guarded(
    js: JetStreamContext, event: AnyEvent, headers: dict[str, str], expected: int
) -> int | None:
    """Publish `event` if the job's last sequence is `expected`; None if it is not."""
    all_headers = {**headers, "Nats-Expected-Last-Subject-Sequence": str(expected)}
    try:
        ack = await js.publish(
            subjects.job_subject(event.job_id),
            encode(event),
            stream=subjects.JOBS_STREAM,
            headers=all_headers,
        )
    except APIError as exc:
        if exc.err_code == _WRONG_LAST_SEQUENCE:
            return None
        raise
    return ack.seq


async def _chain_head(
    js: JetStreamContext, subject: str, *, direct: bool
) -> tuple[int, str | None]:
    """Return the sequence and SHA-256 of the last message on `subject` (0, None)."""
    try:
        msg = await js.get_last_msg(subjects.JOBS_STREAM, subject, direct=direct)
    except NotFoundError:
        return 0, None
    except NoRespondersError:
        if not direct:
            raise
        # The stream was created without allow_direct; ask the leader.
        return await _chain_head(js, subject, direct=False)
    return msg.seq or 0, hash_message(msg.data or b"")


def hash_message(data: bytes) -> str:
    """Return the chain hash of a stored message: SHA-256 of its data, in hex."""
    return hashlib.sha256(data).hexdigest()


async def last_seq(js: JetStreamContext, job_id: str) -> int:
    """Return the stream sequence of the job's last event, or 0 if it has none."""
    try:
        msg = await js.get_last_msg(subjects.JOBS_STREAM, subjects.job_subject(job_id))
    except NotFoundError:
        return 0
    return msg.seq or 0


async def read_job(js: JetStreamContext, job_id: str) -> list[StoredEvent]:
    """Return every stored event of one job, oldest first."""
    messages = await read_subject(
        js, subjects.JOBS_STREAM, subjects.job_subject(job_id)
    )
    events = []
    for msg in messages:
        meta = msg.metadata
        events.append(
            StoredEvent(meta.sequence.stream, decode_event(msg.data), meta.timestamp)
        )
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


async def read_subject(
    js: JetStreamContext, stream: str, subject: str, start_seq: int = 1
) -> list[Msg]:
    """Return the messages stored on `subject` from `start_seq` on, oldest first.

    Stops at the last message stored when the read began; use `follow` or a
    live subscription to go on from there.
    """
    sub = await js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=ConsumerConfig(opt_start_seq=max(1, start_seq)),
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
    try:
        info = await sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered else 0
        if not info.num_pending and not delivered:
            return []
        messages = []
        while True:
            msg = await sub.next_msg(timeout=10.0)
            messages.append(msg)
            if msg.metadata.num_pending == 0:
                return messages
    finally:
        await sub.unsubscribe()
