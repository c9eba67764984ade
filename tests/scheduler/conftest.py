"""An in-process gateway and scheduler with executors added per test.

The scheduler gets the rules each test needs; executors are real, with real
Docker, and run in this process with their own id, slots and labels.
"""

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from libs.config import Config
from libs.events.embedded import EmbeddedNats
from services.cli.client import GatewayClient
from services.executor.service import Executor
from services.gateway import Gateway
from services.scheduler import Scheduler
from services.scheduler.rules import SchedulingRules
from tests.conftest import TEST_IMAGE, make_config, make_repo, wait_until

NAP_PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  nap:
    scripts: ["sleep ${{NAP:-0}}", "echo slept $NAP"]
"""
SKIPPED_PIPELINE = f"""
image: {TEST_IMAGE}
on:
  manual: false
steps:
  never:
    scripts: ["echo must not run"]
"""
FINISHED = {"succeeded", "failed", "cancelled", "timed_out", "skipped", "expired"}


class Cluster:
    """Gateway and scheduler on one NATS; `add_executor` adds executors."""

    def __init__(self, tmp_path: Path, nats_url: str) -> None:
        self.tmp_path = tmp_path
        self.nats_url = nats_url
        self.config = self.make_config()
        self.gateway = Gateway(self.config, nats_url)
        self.scheduler: Scheduler | None = None
        self.executors: list[Executor] = []

    def make_config(self, **overrides: Any) -> Config:
        return make_config(self.tmp_path, **{"nats.url": self.nats_url, **overrides})

    async def start_scheduler(self, rules: SchedulingRules | None = None) -> None:
        self.scheduler = Scheduler(self.config, self.nats_url, rules, tick=0.2)
        await self.scheduler.start()

    async def add_executor(
        self, executor_id: str, slots: int = 1, labels: tuple[str, ...] = ()
    ) -> Executor:
        config = self.make_config(
            **{"executor.id": executor_id, "executor.max_concurrent_jobs": slots}
        )
        executor = Executor(config, self.nats_url, labels=labels)
        await executor.start()
        self.executors.append(executor)
        return executor

    async def stop(self) -> None:
        for service in [*reversed(self.executors), self.scheduler, self.gateway]:
            if service is not None:
                await service.stop()


@pytest.fixture
async def cluster(
    tmp_path: Path, test_image: str, nats_server: EmbeddedNats
) -> AsyncIterator[Cluster]:
    running = Cluster(tmp_path, nats_server.url)
    await running.gateway.start()
    yield running
    await running.stop()


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[GatewayClient]:
    async with GatewayClient(cluster.gateway.url) as gateway_client:
        yield gateway_client


@pytest.fixture
def nap_repo(tmp_path: Path) -> Callable[[str], str]:
    """Make a repository whose one step sleeps $NAP seconds; return its path."""

    def make(name: str = "nap") -> str:
        make_repo(tmp_path / name, {".stasis-ci.yaml": NAP_PIPELINE})
        return str(tmp_path / name)

    return make


async def submit(client: GatewayClient, url: str, nap: float = 0, **fields: Any) -> str:
    """Submit a job of `url` that sleeps `nap` seconds; return its job id."""
    body = {"repository": {"url": url}, "env": {"NAP": str(nap)}, **fields}
    accepted = await client.submit(body)
    return str(accepted["job_id"])


async def job_of(client: GatewayClient, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = await client.request("GET", f"/api/v1/jobs/{job_id}")
    return job


async def run_of(client: GatewayClient, job_id: str) -> dict[str, Any]:
    run: dict[str, Any] = (await job_of(client, job_id))["runs"][-1]
    return run


async def wait_run(
    client: GatewayClient,
    job_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Wait until the job's last run satisfies `predicate`; return the run."""

    async def check() -> dict[str, Any] | None:
        run = await run_of(client, job_id)
        return run if predicate(run) else None

    result: dict[str, Any] = await wait_until(check, timeout=timeout, interval=0.1)
    return result


async def wait_finished(
    client: GatewayClient, job_id: str, timeout: float = 60.0
) -> dict[str, Any]:
    return await wait_run(client, job_id, lambda r: r["status"] in FINISHED, timeout)


async def events_of(client: GatewayClient, job_id: str) -> list[dict[str, Any]]:
    """Return the job's stored events, each with its stream `seq` added."""
    body = await client.request("GET", f"/api/v1/jobs/{job_id}/events")
    return [{**item["event"], "seq": item["seq"]} for item in body["events"]]
