"""Three executor processes on one host share one pool without losing a run.

Gateway, scheduler, logsink and three `stasis executor --slots 2 --labels
docker,linux` processes run as subprocesses against one nats-server. Thirty
short jobs go in, and one executor gets SIGTERM while it runs a job. Every job
must end with exactly one outcome, every attempt must start once, and all
three executors must have run some.
"""

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from libs.events import RunFinished, RunStarted, connect
from libs.events.audit import audit_job
from libs.events.embedded import EmbeddedNats
from libs.events.journal import StoredEvent, read_job
from services.cli.client import GatewayClient
from tests.conftest import TEST_IMAGE, make_repo, wait_until
from tests.e2e.helpers import ROOT, ServiceProcess

JOBS = 30
EXECUTORS = ("scale-a", "scale-b", "scale-c")
PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  work:
    scripts: ["sleep 1", "echo done"]
"""
SETTINGS = {"STASIS_NATS_ACK_WAIT": "3s"}


class ExecutorProcess(ServiceProcess):
    """A `stasis executor` subprocess started with command-line flags."""

    def __init__(self, nats_url: str, data_dir: Path, executor_id: str) -> None:
        super().__init__(
            "executor", nats_url, data_dir, STASIS_EXECUTOR_ID=executor_id, **SETTINGS
        )
        self.executor_id = executor_id

    async def start(self) -> None:
        """Start the executor with two slots and two labels."""
        command = [sys.executable, "-m", "services.cli.main", "executor"]
        flags = ["--slots", "2", "--labels", "docker,linux"]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [*command, *flags],
                cwd=ROOT,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )


@pytest.fixture
async def services(
    nats_server: EmbeddedNats, tmp_path: Path, test_image: str
) -> AsyncIterator[tuple[ServiceProcess, dict[str, ExecutorProcess]]]:
    """Logsink, scheduler, gateway and the three executors, all running."""
    data = tmp_path / "data"
    others = [
        ServiceProcess(name, nats_server.url, data, **SETTINGS)
        for name in ("logsink", "scheduler", "gateway")
    ]
    executors = {e: ExecutorProcess(nats_server.url, data, e) for e in EXECUTORS}
    started: list[ServiceProcess] = []
    try:
        for process in [*others, *executors.values()]:
            await process.start()
            started.append(process)
        yield others[-1], executors
    finally:
        for process in reversed(started):
            process.stop()


def runs_on(events: list[StoredEvent], executor_id: str) -> set[str]:
    """Return the runs that `executor_id` started and that have not finished."""
    started = {
        e.event.run_id
        for e in events
        if isinstance(e.event, RunStarted) and e.event.executor_id == executor_id
    }
    finished = {e.event.run_id for e in events if isinstance(e.event, RunFinished)}
    return started - finished


async def all_events(js: JetStreamContext, job_ids: list[str]) -> list[StoredEvent]:
    per_job = await asyncio.gather(*(read_job(js, job_id) for job_id in job_ids))
    return [event for events in per_job for event in events]


async def test_three_executors_share_thirty_jobs(
    services: tuple[ServiceProcess, dict[str, ExecutorProcess]],
    nats_server: EmbeddedNats,
    tmp_path: Path,
) -> None:
    gateway, executors = services
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": PIPELINE})
    client = await connect(nats_server.url, "scaling-test")
    js = client.jetstream()
    began = time.monotonic()
    try:
        async with GatewayClient(gateway.url) as api:
            body = {"repository": {"url": str(tmp_path / "repo")}, "labels": ["docker"]}
            accepted = [await api.submit(body) for _ in range(JOBS)]
        job_ids = [a["job_id"] for a in accepted]

        async def busy_run_on_b() -> bool:
            return bool(runs_on(await all_events(js, job_ids), "scale-b"))

        await wait_until(busy_run_on_b, timeout=60, interval=0.2)
        executors["scale-b"].stop()  # SIGTERM, then wait for the drain to end

        async def all_finished() -> bool:
            events = await all_events(js, job_ids)
            return sum(isinstance(e.event, RunFinished) for e in events) >= JOBS

        await wait_until(all_finished, timeout=80, interval=0.5)
        events = await all_events(js, job_ids)
        reports = [await audit_job(client, job_id) for job_id in job_ids]
    finally:
        await client.close()
    elapsed = time.monotonic() - began

    started = [e.event for e in events if isinstance(e.event, RunStarted)]
    finished = [e.event for e in events if isinstance(e.event, RunFinished)]
    starts = Counter((s.run_id, s.attempt) for s in started)
    outcomes = Counter(f.run_id for f in finished)
    assert {s.executor_id for s in started} == set(EXECUTORS)
    assert [key for key, count in starts.items() if count > 1] == []
    assert len(outcomes) == JOBS
    assert [run for run, count in outcomes.items() if count > 1] == []
    assert {f.outcome for f in finished} == {"succeeded"}
    assert [r.job_id for r in reports if r.verdict != "intact"] == []
    assert elapsed < 90, f"30 jobs took {elapsed:.0f}s on three executors"
