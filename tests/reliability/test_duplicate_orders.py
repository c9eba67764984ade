"""Duplicate and stale dispatch orders: one start per attempt, stale ones acked.

Two in-process executors with two slots each pull from the same pool. The run
is queued by hand and its order published several times with different
message ids before the executors start, so that they fetch the copies at once
and race for the claim.
"""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from libs.events import DispatchOrder, JobQueued, JobSubmitted, encode, subjects
from libs.events.embedded import EmbeddedNats
from libs.events.ids import new_id
from libs.events.journal import append, read_job
from libs.events.streams import (
    dispatch_consumer_config,
    dispatch_consumer_name,
    ensure_consumer,
)
from libs.events.types import Repository, event_tag
from services.executor.service import Executor
from tests.conftest import TEST_IMAGE, make_config, make_repo, wait_until

from .harness import audit_runs, docker_leftovers

PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  only:
    scripts: ["sleep 1", "echo ran once"]
"""
COPIES = 4


@pytest.fixture
async def executors(
    nats_server: EmbeddedNats, tmp_path: Path, test_image: str
) -> AsyncIterator[list[Executor]]:
    created = [
        Executor(
            make_config(
                tmp_path,
                **{
                    "nats.url": nats_server.url,
                    "executor.id": name,
                    "executor.max_concurrent_jobs": 2,
                },
            )
        )
        for name in ("ex-a", "ex-b")
    ]
    yield created
    for executor in created:
        if executor.state.value == "running":
            await executor.stop()


async def _queue_run(js: JetStreamContext, repo: Path) -> tuple[str, str]:
    job_id, run_id = new_id(), new_id()
    submitted = JobSubmitted(
        job_id=job_id, run_id=run_id, repository=Repository(url=str(repo))
    )
    seq = await append(js, submitted)
    await append(js, JobQueued(job_id=job_id, run_id=run_id), expected_last_seq=seq)
    return job_id, run_id


async def _queue_test_run(js: JetStreamContext, tmp_path: Path) -> tuple[str, str]:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": PIPELINE})
    await ensure_consumer(
        js, subjects.DISPATCH_STREAM, dispatch_consumer_config("default", 5.0)
    )
    return await _queue_run(js, tmp_path / "repo")


async def _publish_order(js: JetStreamContext, job_id: str, run_id: str) -> None:
    # A fresh message id each time, so the stream's duplicate window keeps all.
    await js.publish(
        subjects.dispatch_subject("default"),
        encode(DispatchOrder(job_id=job_id, run_id=run_id)),
        stream=subjects.DISPATCH_STREAM,
        headers={"Nats-Msg-Id": f"{run_id}:copy:{new_id()}"},
    )


async def _orders_settled(js: JetStreamContext) -> bool:
    info = await js.consumer_info(
        subjects.DISPATCH_STREAM, dispatch_consumer_name("default")
    )
    return info.num_pending == 0 and info.num_ack_pending == 0


async def _finished(js: JetStreamContext, job_id: str) -> bool:
    events = await read_job(js, job_id)
    return any(event_tag(s.event) == "run.finished" for s in events)


async def test_copies_of_order_start_run_once(
    js: Any, executors: list[Executor], tmp_path: Path
) -> None:
    job_id, run_id = await _queue_test_run(js, tmp_path)
    for _ in range(COPIES):
        await _publish_order(js, job_id, run_id)
    for executor in executors:
        await executor.start()

    await wait_until(lambda: _finished(js, job_id), timeout=60)
    await wait_until(lambda: _orders_settled(js), timeout=30)
    events = await read_job(js, job_id)

    run = audit_runs(events)[run_id]
    assert run.started_attempts == [1]
    assert run.outcomes == ["succeeded"]
    assert run.after_finish == []
    assert docker_leftovers([job_id]) == []


async def test_stale_order_of_finished_run_is_acked(
    js: Any, executors: list[Executor], tmp_path: Path
) -> None:
    job_id, run_id = await _queue_test_run(js, tmp_path)
    await _publish_order(js, job_id, run_id)
    for executor in executors:
        await executor.start()
    await wait_until(lambda: _finished(js, job_id), timeout=60)
    await wait_until(lambda: _orders_settled(js), timeout=30)
    before = await read_job(js, job_id)

    await _publish_order(js, job_id, run_id)
    await wait_until(lambda: _orders_settled(js), timeout=30)
    after = await read_job(js, job_id)
    stream = await js.stream_info(subjects.DISPATCH_STREAM)

    assert [s.seq for s in after] == [s.seq for s in before]
    assert stream.state.messages == 0
    assert audit_runs(after)[run_id].outcomes == ["succeeded"]
