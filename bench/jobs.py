"""Whole jobs through the stack: one-step latency, pickup, stages, jobs per second."""

import asyncio
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiodocker

from libs.events import connect
from libs.events.journal import read_job
from libs.events.types import event_tag
from services.cli.stack import Stack

from .common import Result, Sizes, make_repo, raw_lifecycle, run_job, running_stack

TRUE_SCRIPT = "true"
STAGES = (
    "job.submitted",
    "job.queued",
    "run.started",
    "source.checked_out",
    "pipeline.loaded",
    "step.started",
    "step.finished",
    "run.finished",
)


class CreateWatcher:
    """Docker `create` events of step containers, by job id, with Docker's time."""

    def __init__(self, docker: aiodocker.Docker) -> None:
        filters = {
            "type": ["container"],
            "event": ["create"],
            "label": ["stasis.job_id"],
        }
        self._subscriber = docker.events.subscribe(filters=json.dumps(filters))
        self._docker = docker
        self.created_ns: dict[str, int] = {}
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        while True:
            event = await self._subscriber.get()
            if event is None:
                return
            labels = event.get("Actor", {}).get("Attributes", {})
            job_id = labels.get("stasis.job_id")
            if job_id and job_id not in self.created_ns:
                self.created_ns[job_id] = int(event["timeNano"])

    async def wait_for(self, job_id: str, timeout: float = 10.0) -> int:
        """Return the create time of `job_id`'s first container, in ns since epoch."""
        async with asyncio.timeout(timeout):
            while job_id not in self.created_ns:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        return self.created_ns[job_id]

    async def close(self) -> None:
        """Stop listening to Docker's events."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._docker.events.stop()


async def stage_times(stack: Stack, job_id: str) -> dict[str, float]:
    """Return seconds between each stored event of a job and the one before it."""
    nc = await connect(stack.nats_url, "bench-stages")
    try:
        events = await read_job(nc.jetstream(), job_id)
    finally:
        await nc.close()
    times: dict[str, float] = {}
    previous = None
    for stored in events:
        tag = event_tag(stored.event)
        if previous is not None and stored.stored_at and tag in STAGES:
            times[f"{tag}"] = (stored.stored_at - previous).total_seconds()
        previous = stored.stored_at
    return times


async def one_step_and_pickup(sizes: Sizes, tmp: Path) -> list[Result]:
    """Time a one-step `true` job beside the raw lifecycle; record pickup, stages."""
    repo = make_repo(tmp / "true-repo", TRUE_SCRIPT)
    jobs, floors, pickups = [], [], []
    stages: dict[str, list[float]] = defaultdict(list)
    async with (
        running_stack(tmp / "one-step") as (stack, client),
        aiodocker.Docker() as docker,
    ):
        watcher = CreateWatcher(docker)
        try:
            await run_job(client, repo)  # warm-up: first clone, image inspect
            await raw_lifecycle(docker, TRUE_SCRIPT)
            for _ in range(sizes.repeat):
                posted_ns = time.time_ns()
                job_id, seconds = await run_job(client, repo)
                jobs.append(seconds * 1000)
                created_ns = await watcher.wait_for(job_id)
                pickups.append((created_ns - posted_ns) / 1e6)
                for stage, value in (await stage_times(stack, job_id)).items():
                    stages[stage].append(value * 1000)
                floors.append(await raw_lifecycle(docker, TRUE_SCRIPT) * 1000)
        finally:
            await watcher.close()
    stage_notes = [
        f"`{stage}`: {statistics.median(values):.1f} ms after the event before it"
        for stage, values in stages.items()
    ]
    return [
        Result(
            "one-step `true` job, submit to finished",
            "ms",
            jobs,
            floors,
            "aiodocker create, start, wait, delete",
            "ratio_max",
            1.10,
            f"{sizes.repeat} jobs",
            notes=stage_notes,
        ),
        Result(
            "pickup: POST to container create",
            "ms",
            pickups,
            target_kind="max",
            target=20.0,
            size=f"{sizes.repeat} jobs",
        ),
    ]


async def jobs_per_second(sizes: Sizes, tmp: Path) -> Result:
    """Run `jobs_parallel` trivial jobs on 4 slots beside 4 parallel raw lifecycles."""
    repo = make_repo(tmp / "rate-repo", TRUE_SCRIPT)
    count = sizes.jobs_parallel
    rates, floors = [], []
    overrides: dict[str, Any] = {"executor.max_concurrent_jobs": 4}
    async with (
        running_stack(tmp / "rate", **overrides) as (_, client),
        aiodocker.Docker() as docker,
    ):
        await run_job(client, repo)
        slots = asyncio.Semaphore(4)

        async def limited() -> None:
            async with slots:
                await raw_lifecycle(docker, TRUE_SCRIPT)

        for _ in range(max(2, sizes.repeat // 2)):
            started = time.perf_counter()
            await asyncio.gather(*(run_job(client, repo) for _ in range(count)))
            rates.append(count / (time.perf_counter() - started))
            started = time.perf_counter()
            await asyncio.gather(*(limited() for _ in range(count)))
            floors.append(count / (time.perf_counter() - started))
    return Result(
        "trivial jobs per second, 4 executor slots",
        "jobs/s",
        rates,
        floors,
        "4 parallel aiodocker lifecycles",
        "ratio_min",
        0.9,
        f"{count} jobs per repetition",
        higher_is_better=True,
    )
