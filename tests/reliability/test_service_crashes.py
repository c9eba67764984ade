"""Scheduler and logsink killed with SIGKILL mid-flow and started again.

Every job must end with exactly one `run.finished`, no run may be queued
twice, and every step's log file must hold its output once. The logsink's
own chunk-level guarantees are shown in `tests/logsink/test_logsink_crash.py`;
here it is killed while real runs write logs.
"""

import asyncio
from pathlib import Path

from libs.events.embedded import EmbeddedNats
from services.cli.client import GatewayClient
from tests.conftest import make_repo, wait_until

from .harness import (
    NAP_PIPELINE,
    Services,
    assert_one_outcome_each,
    docker_leftovers,
    submit_naps,
    wait_all_finished,
)


async def test_scheduler_and_logsink_killed(
    nats_server: EmbeddedNats, tmp_path: Path, test_image: str
) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": NAP_PIPELINE})
    data = tmp_path / "data"
    services = Services(nats_server.url, data)
    for name in ("logsink", "scheduler", "gateway"):
        services.add(name)
    services.add("ex-a", "executor", STASIS_EXECUTOR_ID="ex-a")
    services.add("ex-b", "executor", STASIS_EXECUTOR_ID="ex-b")
    scheduler = services.processes["scheduler"]
    logsink = services.processes["logsink"]
    try:
        await services.start(*services.processes)
        async with GatewayClient(services.gateway.url) as client:
            jobs = await submit_naps(client, tmp_path / "repo", [1, 2, 1, 2])
            scheduler.kill()
            jobs += await submit_naps(client, tmp_path / "repo", [1, 2, 1, 2])
            await scheduler.start()
            await asyncio.sleep(1.5)
            logsink.kill()
            jobs += await submit_naps(client, tmp_path / "repo", [1, 1])
            await asyncio.sleep(1.0)
            await logsink.start()
            finished = await wait_all_finished(client, jobs, timeout=90)
        exited = services.exited()
    finally:
        services.stop()

    assert exited == {}
    statuses = {job_id: job["runs"][-1]["status"] for job_id, job in finished.items()}
    assert set(statuses.values()) == {"succeeded"}, statuses
    await assert_one_outcome_each(nats_server.url, jobs)
    assert docker_leftovers(jobs) == []
    for job_id, job in finished.items():
        path = data / "logs" / job_id / job["runs"][-1]["run_id"] / "nap.log"
        await wait_until(path.exists, timeout=30)
        await wait_until(lambda p=path: "slept" in p.read_text(), timeout=30)
        assert path.read_text().count(f" in {job_id}\n") == 1, path.read_text()
