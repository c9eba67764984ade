"""A scheduler killed with 50 runs queued rebuilds the same queue from the stream."""

from collections.abc import Callable
from pathlib import Path

from libs.events.embedded import EmbeddedNats
from services.cli.client import GatewayClient
from tests.conftest import make_repo, wait_until
from tests.e2e.helpers import ServiceProcess

from .conftest import (
    SKIPPED_PIPELINE,
    Cluster,
    events_of,
    submit,
    wait_finished,
    wait_run,
)

PRIORITIES = [(index * 7) % 3 * 10 - 10 for index in range(50)]
"""-10, 0 and 10 mixed: ageing could reorder them only after 10 minutes."""


async def test_restart_keeps_dispatch_order(
    cluster: Cluster,
    client: GatewayClient,
    nap_repo: Callable[[str], str],
    nats_server: EmbeddedNats,
    tmp_path: Path,
) -> None:
    scheduler = ServiceProcess("scheduler", nats_server.url, tmp_path / "data")
    await scheduler.start()
    try:
        await cluster.add_executor("ex-one", slots=1)
        blocker = await submit(client, nap_repo("nap"), nap=600)
        await wait_run(client, blocker, lambda r: r["status"] == "running")
        make_repo(tmp_path / "skipped", {".stasis-ci.yaml": SKIPPED_PIPELINE})
        jobs = [
            await submit(client, str(tmp_path / "skipped"), priority=p)
            for p in PRIORITIES
        ]
        expected = sorted(jobs, key=lambda j: -PRIORITIES[jobs.index(j)])

        async def planned() -> list[str] | None:
            runs = {
                j: (await client.request("GET", f"/api/v1/jobs/{j}"))["runs"][-1]
                for j in jobs
            }
            positions = [runs[j]["queue_position"] for j in jobs]
            if sorted(p or 0 for p in positions) != list(range(1, 51)):
                return None
            return sorted(jobs, key=lambda j: runs[j]["queue_position"])

        before_kill = await wait_until(planned, timeout=60, interval=0.2)
        scheduler.kill()
        await scheduler.start()
        await client.request("DELETE", f"/api/v1/jobs/{blocker}")
        for job_id in jobs:
            await wait_finished(client, job_id, timeout=90)
    finally:
        scheduler.stop()

    dispatch_seq = {}
    for job_id in jobs:
        events = await events_of(client, job_id)
        kinds = [e["type"] for e in events]
        assert kinds.count("job.queued") == 1, job_id
        assert kinds.count("run.dispatched") == 1, job_id
        assert events[-1]["type"] == "run.finished"
        assert events[-1]["outcome"] == "skipped"
        dispatch_seq[job_id] = next(
            e["seq"] for e in events if e["type"] == "run.dispatched"
        )
    dispatched = sorted(jobs, key=dispatch_seq.__getitem__)
    assert before_kill == expected
    assert dispatched == before_kill
