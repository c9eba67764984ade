"""Concurrency groups, executor labels and queue expiry."""

from collections.abc import Callable
from datetime import datetime

from services.cli.client import GatewayClient
from services.scheduler.rules import SchedulingRules

from .conftest import Cluster, events_of, submit, wait_finished, wait_run


async def test_group_runs_one_at_a_time(
    cluster: Cluster, client: GatewayClient, nap_repo: Callable[[str], str]
) -> None:
    await cluster.start_scheduler()
    await cluster.add_executor("ex-two", slots=2)
    repo = nap_repo("nap")
    first = await submit(client, repo, nap=3, concurrency_group="deploy")
    await wait_run(client, first, lambda r: r["status"] == "running")
    second = await submit(client, repo, concurrency_group="deploy")

    held = await wait_run(client, second, lambda r: bool(r["queue_reason"]))
    assert held["status"] == "queued"
    assert "concurrency group 'deploy'" in held["queue_reason"]
    first_run = await wait_finished(client, first)
    second_run = await wait_finished(client, second)
    assert first_run["status"] == "succeeded"
    assert second_run["status"] == "succeeded"
    dispatched = datetime.fromisoformat(second_run["dispatched_at"])
    assert dispatched >= datetime.fromisoformat(first_run["finished_at"])


async def test_group_cancel_in_progress(
    cluster: Cluster, client: GatewayClient, nap_repo: Callable[[str], str]
) -> None:
    await cluster.start_scheduler()
    await cluster.add_executor("ex-two", slots=2)
    repo = nap_repo("nap")
    old = await submit(client, repo, nap=60, concurrency_group="deploy")
    await wait_run(client, old, lambda r: r["status"] == "running")
    new = await submit(
        client, repo, concurrency_group="deploy", cancel_in_progress=True
    )

    old_run = await wait_finished(client, old, timeout=30)
    new_run = await wait_finished(client, new)
    cancels = [
        e for e in await events_of(client, old) if e["type"] == "run.cancel_requested"
    ]
    assert old_run["status"] == "cancelled"
    assert new_run["status"] == "succeeded"
    assert len(cancels) == 1
    assert cancels[0]["requested_by"] == "scheduler"
    assert new in cancels[0]["reason"]
    dispatched = datetime.fromisoformat(new_run["dispatched_at"])
    assert dispatched >= datetime.fromisoformat(old_run["finished_at"])


async def test_missing_label_is_visible(
    cluster: Cluster, client: GatewayClient, nap_repo: Callable[[str], str]
) -> None:
    await cluster.start_scheduler()
    await cluster.add_executor("ex-plain", slots=1)
    repo = nap_repo("nap")
    job_id = await submit(client, repo, labels=["gpu"])

    held = await wait_run(client, job_id, lambda r: bool(r["queue_reason"]))
    assert held["status"] == "queued"
    assert (
        held["queue_reason"] == "no live executor in pool 'default' has labels ['gpu']"
    )
    assert held["queue_position"] == 1

    await cluster.add_executor("ex-gpu", slots=1, labels=("gpu", "docker"))
    run = await wait_finished(client, job_id)
    dispatched = [
        e for e in await events_of(client, job_id) if e["type"] == "run.dispatched"
    ]
    assert run["status"] == "succeeded"
    assert run["executor_id"] == "ex-gpu"
    assert [e["labels"] for e in dispatched] == [["gpu"]]


async def test_queue_expiry_ends_run(
    cluster: Cluster, client: GatewayClient, nap_repo: Callable[[str], str]
) -> None:
    await cluster.start_scheduler(SchedulingRules(max_queue_time=1.5))
    repo = nap_repo("nap")
    job_id = await submit(client, repo)

    run = await wait_finished(client, job_id, timeout=20)
    kinds = [e["type"] for e in await events_of(client, job_id)]
    assert run["status"] == "expired"
    assert "maximum queue time of 1.5s" in run["reason"]
    assert "no live executor in pool 'default'" in run["reason"]
    assert kinds == ["job.submitted", "job.queued", "run.finished"]
