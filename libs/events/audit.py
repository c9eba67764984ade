"""Audit of a job's stored events: the hash chain, the order and the fold.

`journal.append` stores every event with `prev_hash`, the SHA-256 of the job's
previous stored message. The audit reads the messages back from JetStream,
checks each link, and names the event that is missing, reordered or altered
by its stream sequence and type. It then folds the events with the shared
fold; `libs.events.timeline` renders the result for people.

What the chain cannot show: removing the last events of a job, and a rewrite
of the whole subject whose writer recomputes every hash. Keep the head hash
that `timeline.render_timeline` prints somewhere else to detect the second.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Collection, Iterable
from datetime import UTC, datetime
from typing import Literal

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig, DeliverPolicy

from . import subjects
from .errors import InvalidTransition
from .fold import JobState, apply
from .ids import is_valid_id
from .journal import hash_message, read_subject
from .types import (
    AnyEvent,
    decode_event,
    event_tag,
)

FindingKind = Literal["missing", "altered", "reordered", "inserted", "undecodable"]
Verdict = Literal["intact", "tampered", "unchained", "unreadable"]


class StoredMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One message as JetStream stores it: the exact data bytes and their place."""

    subject: str
    seq: int
    data: bytes
    headers: dict[str, str] = {}
    stored_at: datetime | None = None


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    """One break in a job's chain, naming the stored event it concerns."""

    kind: FindingKind
    seq: int
    event_type: str
    message: str


class Rejected(msgspec.Struct, frozen=True, kw_only=True):
    """An event that decodes and is chained, but that the fold does not accept."""

    seq: int
    event_type: str
    reason: str


class AuditReport(msgspec.Struct, frozen=True, kw_only=True):
    """The result of auditing one job."""

    job_id: str
    messages: list[StoredMessage]
    findings: list[Finding]
    rejected: list[Rejected]
    state: JobState | None
    verdict: Verdict

    @property
    def head_hash(self) -> str | None:
        """SHA-256 of the job's last stored message, the value to keep elsewhere."""
        return hash_message(self.messages[-1].data) if self.messages else None


def message_from_nats(msg: Msg) -> StoredMessage:
    """Convert a message delivered by a JetStream consumer."""
    meta = msg.metadata
    return StoredMessage(
        subject=msg.subject,
        seq=meta.sequence.stream,
        data=msg.data,
        headers=dict(msg.headers or {}),
        stored_at=meta.timestamp,
    )


async def read_messages(client: Client, job_id: str) -> list[StoredMessage]:
    """Return every stored message of one job, oldest first, with exact bytes."""
    js = client.jetstream()
    subject = subjects.job_subject(job_id)
    return [
        message_from_nats(msg)
        for msg in await read_subject(js, subjects.JOBS_STREAM, subject)
    ]


async def follow_messages(client: Client, job_id: str) -> AsyncIterator[StoredMessage]:
    """Yield every message of one job from the first, then live, until cancelled."""
    sub = await client.jetstream().subscribe(
        subjects.job_subject(job_id),
        stream=subjects.JOBS_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        config=ConsumerConfig(),
    )
    try:
        while True:
            yield message_from_nats(await sub.next_msg(timeout=None))
    finally:
        await sub.unsubscribe()


async def deleted_sequences(client: Client, stream: str) -> set[int]:
    """Return the sequences deleted inside `stream`, from its detailed info.

    A removed message leaves a hole in the stream's sequences that JetStream
    lists, so the audit can tell a removed event from an altered one.
    """
    # nats-py's stream_info has no `deleted_details` option, so this sends the
    # request to the JetStream API itself.
    reply = await client.request(
        f"$JS.API.STREAM.INFO.{stream}",
        json.dumps({"deleted_details": True}).encode(),
        timeout=10.0,
    )
    info = json.loads(reply.data)
    if "error" in info:
        raise RuntimeError(f"stream info of {stream} failed: {info['error']}")
    return set(info.get("state", {}).get("deleted") or [])


async def audit_job(client: Client, job_id: str) -> AuditReport:
    """Read one job's events from the stream and audit them."""
    messages = await read_messages(client, job_id)
    report = audit_messages(job_id, messages)
    if not any(f.kind in ("missing", "altered") for f in report.findings):
        return report
    # Only a broken link needs the holes of the stream, to name its cause.
    deleted = await deleted_sequences(client, subjects.JOBS_STREAM)
    return audit_messages(job_id, messages, deleted)


def audit_messages(
    job_id: str, messages: list[StoredMessage], deleted: Collection[int] = ()
) -> AuditReport:
    """Verify the chain of a job's stored messages and fold them.

    `deleted` contains the stream's deleted sequences. A broken link with one
    of them in between is reported as a missing event, otherwise as an altered
    one.
    """
    events = [decode_message(message) for message in messages]
    findings = check_chain(messages, events, deleted)
    state, rejected = _fold(messages, events)
    chained = any(e is not None and e.prev_hash for e in events)
    if not messages:
        verdict: Verdict = "unreadable"
    elif findings:
        verdict = "tampered"
    elif not chained and len(messages) > 1:
        verdict = "unchained"
    else:
        verdict = "intact"
    return AuditReport(
        job_id=job_id,
        messages=messages,
        findings=findings,
        rejected=rejected,
        state=state,
        verdict=verdict,
    )


def check_chain(
    messages: list[StoredMessage],
    events: list[AnyEvent | None],
    deleted: Collection[int] = (),
) -> list[Finding]:
    """Return every broken link of the chain, in stream order.

    A job whose events all lack `prev_hash` was written before the chain
    existed, so only its order is checked; `audit_messages` calls it
    "unchained".
    """
    findings = _check_order(messages, events)
    if all(event is None or event.prev_hash is None for event in events):
        return findings
    # NOTE: a job that ran while its writers were upgraded has unchained events
    # before chained ones, and each unchained one after the first is reported
    # as inserted.
    hashes = [hash_message(m.data) for m in messages]
    position: dict[str, int] = {}
    for index, digest in enumerate(hashes):
        position.setdefault(digest, index)
    for index, event in enumerate(events):
        if event is None:
            continue
        expected = hashes[index - 1] if index else None
        if event.prev_hash != expected:
            findings.append(
                _broken_link(messages, events, index, position, set(deleted))
            )
    return findings


def _check_order(
    messages: list[StoredMessage], events: list[AnyEvent | None]
) -> list[Finding]:
    findings = []
    for index, message in enumerate(messages):
        if events[index] is None:
            findings.append(
                Finding(
                    kind="undecodable",
                    seq=message.seq,
                    event_type=message.headers.get("Stasis-Event-Type", "?"),
                    message=f"seq {message.seq} does not decode as a Stasis event",
                )
            )
        if index and message.seq <= messages[index - 1].seq:
            findings.append(
                Finding(
                    kind="reordered",
                    seq=message.seq,
                    event_type=_type_of(events[index]),
                    message=(
                        f"seq {message.seq} is stored after seq "
                        f"{messages[index - 1].seq}: sequences must increase"
                    ),
                )
            )
    return findings


def _broken_link(
    messages: list[StoredMessage],
    events: list[AnyEvent | None],
    index: int,
    position: dict[str, int],
    deleted: set[int],
) -> Finding:
    """Explain why the event at `index` does not link to the one stored before it."""
    event = events[index]
    assert event is not None
    current_label = _label(messages, events, index)
    previous_label = _label(messages, events, index - 1) if index else "nothing"
    seq, kind = messages[index].seq, event_tag(event)

    if event.prev_hash is None:
        text = (
            f"{current_label} has no prev_hash but follows {previous_label}: "
            "it was inserted"
        )
        return Finding(kind="inserted", seq=seq, event_type=kind, message=text)
    written_after = position.get(event.prev_hash)
    if written_after is not None:
        text = (
            f"{current_label} was written after "
            f"{_label(messages, events, written_after)} but is stored after "
            f"{previous_label}"
        )
        return Finding(kind="reordered", seq=seq, event_type=kind, message=text)
    if index == 0:
        text = (
            f"events before {current_label}, the job's first stored event, are missing "
            "(removed by hand or aged out by nats.jobs_max_age)"
        )
        return Finding(kind="missing", seq=seq, event_type=kind, message=text)
    holes = sorted(d for d in deleted if messages[index - 1].seq < d < seq)
    if holes:
        text = (
            f"an event is missing between {previous_label} and {current_label}: stream "
            f"sequence(s) {', '.join(map(str, holes))} were deleted"
        )
        return Finding(kind="missing", seq=seq, event_type=kind, message=text)
    previous = messages[index - 1]
    text = (
        f"{previous_label} was altered: its bytes do not hash to the prev_hash "
        f"stored in {current_label} (or that prev_hash was changed)"
    )
    return Finding(
        kind="altered",
        seq=previous.seq,
        event_type=_type_of(events[index - 1]),
        message=text,
    )


def _label(
    messages: list[StoredMessage], events: list[AnyEvent | None], index: int
) -> str:
    return f"seq {messages[index].seq} ({_type_of(events[index])})"


def _type_of(event: AnyEvent | None) -> str:
    return "undecodable" if event is None else event_tag(event)


def decode_message(message: StoredMessage) -> AnyEvent | None:
    try:
        return decode_event(message.data)
    except msgspec.DecodeError:
        return None


def _fold(
    messages: list[StoredMessage], events: list[AnyEvent | None]
) -> tuple[JobState | None, list[Rejected]]:
    """Fold like the gateway's projection does: skip what the fold rejects."""
    state: JobState | None = None
    rejected = []
    for message, event in zip(messages, events, strict=True):
        if event is None:
            continue
        try:
            state = apply(state, event)
        except InvalidTransition as exc:
            rejected.append(
                Rejected(seq=message.seq, event_type=event_tag(event), reason=str(exc))
            )
    return state, rejected


class RangeCounts(msgspec.Struct, kw_only=True):
    """How many jobs of a range got each verdict, and why each bad one did."""

    intact: int = 0
    tampered: int = 0
    unchained: int = 0
    unreadable: int = 0
    problems: list[str] = []
    """One line per tampered or unreadable job: its id and the first finding."""

    def add(self, job_id: str, verdict: Verdict, problem: str = "") -> None:
        """Count one job's verdict, and keep `problem` for a bad one."""
        match verdict:
            case "intact":
                self.intact += 1
            case "tampered":
                self.tampered += 1
            case "unchained":
                self.unchained += 1
            case "unreadable":
                self.unreadable += 1
        if problem:
            self.problems.append(f"{job_id}: {problem}")


async def audit_range(
    client: Client,
    since: datetime | None = None,
    until: datetime | None = None,
    concurrency: int = 8,
) -> RangeCounts:
    """Audit every job whose id was made in [since, until) and count verdicts.

    A job id is a ULID, so its first ten characters hold its creation time.
    Ids that are not ULIDs have no time and are always audited.
    """
    info = await client.jetstream().stream_info(
        subjects.JOBS_STREAM, subjects_filter=subjects.ALL_JOBS
    )
    # TODO: nats-server pages the subject list of very large streams; this
    # reads only the first page, because nats-py's stream_info has no offset.
    job_ids = [subjects.job_id_of(s) for s in (info.state.subjects or {})]
    selected = [j for j in sorted(job_ids) if _in_range(j, since, until)]
    counts = RangeCounts()
    deleted: list[set[int]] = []
    gate = asyncio.Semaphore(concurrency)

    async def audit_one(job_id: str) -> None:
        async with gate:
            try:
                messages = await read_messages(client, job_id)
                report = audit_messages(job_id, messages)
                if report.findings:
                    if not deleted:
                        deleted.append(
                            await deleted_sequences(client, subjects.JOBS_STREAM)
                        )
                    report = audit_messages(job_id, messages, deleted[0])
            except (TimeoutError, RuntimeError, NatsError) as exc:
                counts.add(job_id, "unreadable", f"unreadable: {exc!r}")
                return
        problem = report.findings[0].message if report.findings else ""
        counts.add(job_id, report.verdict, problem)

    await asyncio.gather(*(audit_one(job_id) for job_id in selected))
    return counts


def id_time(job_id: str) -> datetime | None:
    """Return the creation time that a ULID job id encodes, or None."""
    if not is_valid_id(job_id):
        return None
    millis = 0
    for char in job_id[:10]:
        millis = millis * 32 + "0123456789abcdefghjkmnpqrstvwxyz".index(char)
    return datetime.fromtimestamp(millis / 1000, UTC)


def _in_range(job_id: str, since: datetime | None, until: datetime | None) -> bool:
    created = id_time(job_id)
    if created is None:
        return True
    return (since is None or created >= since) and (until is None or created < until)


class _Line(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    seq: int
    stored_at: datetime | None = None
    headers: dict[str, str] = {}
    data: str
    """The stored bytes as UTF-8 text, so a fixture stays readable and exact."""


def message_to_line(message: StoredMessage) -> str:
    """Encode one stored message as a JSON line that keeps its exact bytes."""
    line = _Line(
        subject=message.subject,
        seq=message.seq,
        stored_at=message.stored_at,
        headers=message.headers,
        data=message.data.decode("utf-8"),
    )
    return msgspec.json.encode(line).decode()


def messages_from_lines(lines: Iterable[str]) -> list[StoredMessage]:
    """Parse messages written one JSON object a line by `message_to_line`."""
    result = []
    for text in lines:
        if not text.strip():
            continue
        line = _line_decoder.decode(text)
        result.append(
            StoredMessage(
                subject=line.subject,
                seq=line.seq,
                data=line.data.encode("utf-8"),
                headers=line.headers,
                stored_at=line.stored_at,
            )
        )
    return result


_line_decoder = msgspec.json.Decoder(_Line)
