"""A three-node JetStream cluster loses a node and an executor mid-run.

Three nats-server processes on loopback are routed to each other; the streams
and buckets have three replicas (`STASIS_NATS_REPLICAS=3`), so two nodes keep
a quorum. The config files in `deploy/nats-cluster/` must pass the server's
own config check.
"""

import asyncio
import subprocess
from pathlib import Path

import pytest

from libs.events.embedded import find_nats_server
from services.cli.client import GatewayClient
from tests.conftest import ROOT, make_repo, wait_until

from .harness import (
    NAP_PIPELINE,
    Services,
    assert_one_outcome_each,
    create_streams,
    docker_leftovers,
    start_cluster,
    submit_naps,
    wait_all_finished,
)

NAPS = [3, 2, 3, 2, 1, 2, 1, 2]


@pytest.mark.parametrize("node", ["node-1", "node-2", "node-3"])
def test_deploy_config_is_valid(node: str) -> None:
    config = ROOT / "deploy" / "nats-cluster" / f"{node}.conf"
    result = subprocess.run(
        [find_nats_server(), "--config", str(config), "-t"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


async def _running_on(client: GatewayClient, jobs: list[str], executor: str) -> bool:
    for job_id in jobs:
        run = (await client.request("GET", f"/api/v1/jobs/{job_id}"))["runs"][-1]
        if run["status"] == "running" and run["executor_id"] == executor:
            return True
    return False


async def test_node_and_executor_lost(tmp_path: Path, test_image: str) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": NAP_PIPELINE})
    nodes = await start_cluster(tmp_path / "nats")
    url = ",".join(node.url for node in nodes)
    services = Services(url, tmp_path / "data", STASIS_NATS_REPLICAS="3")
    try:
        await create_streams(url, replicas=3)
        for name in ("logsink", "scheduler", "gateway"):
            services.add(name)
        lost = services.add("ex-a", "executor", STASIS_EXECUTOR_ID="ex-a")
        services.add("ex-b", "executor", STASIS_EXECUTOR_ID="ex-b")
        await services.start(*services.processes)
        async with GatewayClient(services.gateway.url) as client:
            jobs = await submit_naps(client, tmp_path / "repo", NAPS)
            # Generous: a busy machine starts containers slowly.
            await wait_until(lambda: _running_on(client, jobs, "ex-a"), timeout=90)
            nodes[0].kill()
            lost.kill()
            await asyncio.sleep(0.5)
            finished = await wait_all_finished(client, jobs, timeout=120)
        del services.processes["ex-a"]
        exited = services.exited()
        await assert_one_outcome_each(",".join(node.url for node in nodes[1:]), jobs)
    finally:
        services.stop()
        for node in nodes:
            node.kill()

    assert exited == {}
    statuses = {job_id: job["runs"][-1]["status"] for job_id, job in finished.items()}
    assert set(statuses.values()) == {"succeeded"}, statuses
    assert docker_leftovers(jobs) == []
