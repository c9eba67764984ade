"""Priority order behind a full executor, and the repository and API key limits."""

from collections.abc import Callable
from datetime import datetime

from libs.events import JobSubmitted, Repository, connect, new_id
from libs.events.journal import append
from services.cli.client import GatewayClient
from services.scheduler.rules import SchedulingRules

from .conftest import Cluster, run_of, submit, wait_finished, wait_run


def _at(run: dict[str, object], field: str) -> datetime:
    value = run[field]
    assert isinstance(value, str), (field, run)
    return datetime.fromisoformat(value)


async def test_priority_order_behind_full_executor(
    cluster: Cluster, client: GatewayClient, nap_repo: Callable[[str], str]
) -> None:
    await cluster.start_scheduler()
    await cluster.add_executor("ex-one", slots=1)
    repo = nap_repo("nap")
    blocker = await submit(client, repo, nap=3)
    await wait_run(client, blocker, lambda r: r["status"] == "running")

    priorities = [0, 5, -5, 5, 0]
    jobs = [await submit(client, repo, priority=p) for p in priorities]
    expected = [jobs[1], jobs[3], jobs[0], jobs[4], jobs[2]]
    for position, job_id in enumerate(expected, start=1):
        held = await wait_run(
            client, job_id, lambda r, p=position: r["queue_position"] == p
        )
        assert held["status"] == "queued"
        assert "every slot" in held["queue_reason"]

    runs = {job_id: await wait_finished(client, job_id) for job_id in jobs}
    order = sorted(jobs, key=lambda j: _at(runs[j], "dispatched_at"))
    assert order == expected
    assert all(run["status"] == "succeeded" for run in runs.values())


async def test_repository_limit_holds_second_run(
    cluster: Cluster, client: GatewayClient, nap_repo: Callable[[str], str]
) -> None:
    await cluster.start_scheduler(SchedulingRules(max_running_per_repository=1))
    await cluster.add_executor("ex-three", slots=3)
    first_repo, other_repo = nap_repo("first"), nap_repo("other")
    first = await submit(client, first_repo, nap=3)
    await wait_run(client, first, lambda r: r["status"] == "running")
    second = await submit(client, first_repo)
    other = await submit(client, other_repo)

    held = await wait_run(client, second, lambda r: bool(r["queue_reason"]))
    assert held["status"] == "queued"
    assert "per repository" in held["queue_reason"]
    assert first_repo in held["queue_reason"]
    other_run = await wait_finished(client, other)
    assert (await run_of(client, first))["status"] == "running"
    assert other_run["status"] == "succeeded"

    first_run = await wait_finished(client, first)
    second_run = await wait_finished(client, second)
    assert second_run["status"] == "succeeded"
    assert _at(second_run, "dispatched_at") >= _at(first_run, "finished_at")


async def test_api_key_limit_holds_second_run(
    cluster: Cluster, client: GatewayClient, nap_repo: Callable[[str], str]
) -> None:
    await cluster.start_scheduler(SchedulingRules(max_running_per_key=1))
    await cluster.add_executor("ex-three", slots=3)
    repo = nap_repo("nap")
    nc = await connect(cluster.nats_url, "test-submitter")
    js = nc.jetstream()

    async def submit_as(key: str, nap: int) -> str:
        # The gateway fills submitted_by once it checks API keys; write it here.
        event = JobSubmitted(
            job_id=new_id(),
            run_id=new_id(),
            repository=Repository(url=repo),
            env={"NAP": str(nap)},
            submitted_by=key,
        )
        seq = await append(js, event)
        client.min_seq = max(client.min_seq, seq)
        return event.job_id

    try:
        first = await submit_as("key-a", 3)
        await wait_run(client, first, lambda r: r["status"] == "running")
        second = await submit_as("key-a", 0)
        other = await submit_as("key-b", 0)
    finally:
        await nc.close()

    held = await wait_run(client, second, lambda r: bool(r["queue_reason"]))
    assert held["status"] == "queued"
    assert "per API key" in held["queue_reason"]
    assert "'key-a'" in held["queue_reason"]
    other_run = await wait_finished(client, other)
    assert (await run_of(client, first))["status"] == "running"
    assert other_run["status"] == "succeeded"

    first_run = await wait_finished(client, first)
    second_run = await wait_finished(client, second)
    assert second_run["status"] == "succeeded"
    assert _at(second_run, "dispatched_at") >= _at(first_run, "finished_at")
