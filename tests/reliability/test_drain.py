"""An executor stopped with SIGTERM drains: no new orders, runs finish or go back."""

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

from libs.events.embedded import EmbeddedNats
from libs.events.journal import read_job
from libs.events.types import event_tag
from services.cli.client import GatewayClient
from services.executor.service import Executor
from tests.conftest import TEST_IMAGE, make_config, make_repo, wait_until

from .harness import (
    NAP_PIPELINE,
    Services,
    assert_one_outcome_each,
    audit_runs,
    docker_leftovers,
    submit_naps,
    wait_all_finished,
)
from .test_duplicate_orders import _orders_settled, _publish_order, _queue_run

LONG_PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  long:
    scripts: ["sleep 5", "echo finished"]
"""


async def _running_on(client: GatewayClient, job_id: str, executor: str) -> bool:
    run = (await client.request("GET", f"/api/v1/jobs/{job_id}"))["runs"][-1]
    steps = run["steps"]
    return (
        run["executor_id"] == executor
        and bool(steps)
        and steps[0]["status"] == "running"
    )


async def test_sigterm_lets_run_finish(
    nats_server: EmbeddedNats, tmp_path: Path, test_image: str
) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": NAP_PIPELINE})
    services = Services(nats_server.url, tmp_path / "data")
    for name in ("logsink", "scheduler", "gateway"):
        services.add(name)
    first = services.add("ex-a", "executor", STASIS_EXECUTOR_ID="ex-a")
    second = services.add("ex-b", "executor", STASIS_EXECUTOR_ID="ex-b")
    try:
        await services.start("logsink", "scheduler", "gateway", "ex-a")
        async with GatewayClient(services.gateway.url) as client:
            [draining] = await submit_naps(client, tmp_path / "repo", [4])
            await wait_until(lambda: _running_on(client, draining, "ex-a"), 30)
            await second.start()
            assert first.process is not None
            first.process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            await asyncio.sleep(0.5)
            [later] = await submit_naps(client, tmp_path / "repo", [0])
            await wait_until(lambda: first.process.poll() is not None, timeout=30)
            drained_in = time.monotonic() - sent
            jobs = await wait_all_finished(client, [draining, later], timeout=60)
    finally:
        services.stop()

    assert first.process.returncode == 0
    assert drained_in < 15
    assert jobs[draining]["runs"][-1]["status"] == "succeeded"
    assert jobs[draining]["runs"][-1]["executor_id"] == "ex-a"
    assert jobs[later]["runs"][-1]["executor_id"] == "ex-b"
    audits = await assert_one_outcome_each(nats_server.url, [draining, later])
    assert [a.started_attempts for a in audits.values()] == [[1], [1]]
    assert "draining" in services.log_of("ex-a")
    assert docker_leftovers([draining, later]) == []


async def test_drain_timeout_hands_order_back(
    js: Any,
    nats_server: EmbeddedNats,
    tmp_path: Path,
    test_image: str,
) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": LONG_PIPELINE})
    first, second = (
        Executor(
            make_config(
                tmp_path,
                **{
                    "nats.url": nats_server.url,
                    "executor.id": name,
                    "executor.drain_timeout": "1s",
                },
            )
        )
        for name in ("ex-a", "ex-b")
    )
    job_id, run_id = await _queue_run(js, tmp_path / "repo")
    await _publish_order(js, job_id, run_id)
    await first.start()
    try:

        async def step_started() -> bool:
            events = await read_job(js, job_id)
            return any(event_tag(s.event) == "step.started" for s in events)

        await wait_until(step_started, timeout=30)
        await second.start()
        stopping = time.monotonic()
        await first.stop()
        stopped_in = time.monotonic() - stopping

        async def finished() -> bool:
            events = await read_job(js, job_id)
            return any(event_tag(s.event) == "run.finished" for s in events)

        await wait_until(finished, timeout=60)
        await wait_until(lambda: _orders_settled(js), timeout=30)
    finally:
        for executor in (first, second):
            if executor.state.value == "running":
                await executor.stop()

    run = audit_runs(await read_job(js, job_id))[run_id]
    assert stopped_in < 8
    assert run.started_attempts == [1, 2]
    assert run.lost_attempts == [1]
    assert run.outcomes == ["succeeded"]
    assert run.after_finish == []
    assert docker_leftovers([job_id]) == []
