"""The hash chain that `journal.append` writes, against a real nats-server."""

import asyncio
import hashlib
import itertools
from typing import Any

import pytest

from libs.events import JobQueued, JobSubmitted, Repository, StreamConflict, subjects
from libs.events.ids import new_id
from libs.events.journal import APPEND_ATTEMPTS, append, read_subject
from libs.events.types import decode_event


def submitted(job_id: str) -> JobSubmitted:
    return JobSubmitted(job_id=job_id, run_id=job_id, repository=Repository(url="/r"))


async def stored(js: Any, job_id: str) -> list[Any]:
    return await read_subject(js, subjects.JOBS_STREAM, subjects.job_subject(job_id))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_append_chains_each_event(js: Any) -> None:
    job_id = new_id()
    await append(js, submitted(job_id))
    for _ in range(3):
        await append(js, JobQueued(job_id=job_id, run_id=job_id))

    messages = await stored(js, job_id)

    assert decode_event(messages[0].data).prev_hash is None
    for previous, current in itertools.pairwise(messages):
        assert decode_event(current.data).prev_hash == sha256(previous.data)


async def test_append_repeated_msg_id_returns_first(js: Any) -> None:
    job_id = new_id()
    await append(js, submitted(job_id))
    queued = JobQueued(job_id=job_id, run_id=job_id)

    first = await append(js, queued, msg_id="queued-once")
    again = await append(js, queued, msg_id="queued-once")

    assert again == first
    assert len(await stored(js, job_id)) == 2


async def test_append_stale_expected_seq_conflicts(js: Any) -> None:
    job_id = new_id()
    seq = await append(js, submitted(job_id))
    await append(js, JobQueued(job_id=job_id, run_id=job_id))

    with pytest.raises(StreamConflict, match="changed since sequence"):
        await append(js, JobQueued(job_id=job_id, run_id=job_id), expected_last_seq=seq)


async def test_append_concurrent_writers_keep_one_chain(js: Any) -> None:
    job_id = new_id()
    await append(js, submitted(job_id))
    # Each lost race means another writer stored its event, so no writer loses
    # more than `writers - 1` times.
    writers = APPEND_ATTEMPTS

    await asyncio.gather(
        *(append(js, JobQueued(job_id=job_id, run_id=job_id)) for _ in range(writers))
    )

    messages = await stored(js, job_id)
    assert len(messages) == writers + 1
    for previous, current in itertools.pairwise(messages):
        assert decode_event(current.data).prev_hash == sha256(previous.data)


class LaggingReplica:
    """A JetStream context whose direct gets return the job's first message.

    A replica that lags behind the stream leader replies like this.
    """

    def __init__(self, js: Any, stale_seq: int) -> None:
        self._js = js
        self._stale_seq = stale_seq

    async def get_last_msg(
        self, stream: str, subject: str, direct: bool = False
    ) -> Any:
        if direct:
            return await self._js.get_msg(stream, self._stale_seq)
        return await self._js.get_last_msg(stream, subject)

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        return await self._js.publish(*args, **kwargs)


async def test_append_stale_replica_keeps_chain(js: Any) -> None:
    job_id = new_id()
    first = await append(js, submitted(job_id))
    last = await append(js, JobQueued(job_id=job_id, run_id=job_id))
    lagging = LaggingReplica(js, stale_seq=first)

    guarded = await append(
        lagging, JobQueued(job_id=job_id, run_id=job_id), expected_last_seq=last
    )
    unguarded = await append(lagging, JobQueued(job_id=job_id, run_id=job_id))

    messages = await stored(js, job_id)
    assert [m.metadata.sequence.stream for m in messages][2:] == [guarded, unguarded]
    for previous, current in itertools.pairwise(messages):
        assert decode_event(current.data).prev_hash == sha256(previous.data)
