"""The job-events stream: projection rebuild, appends, and projection memory."""

import asyncio
import gc
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from libs.config import load_config
from libs.events import (
    AnyEvent,
    JobQueued,
    JobSubmitted,
    PipelineLoaded,
    Repository,
    RunFinished,
    RunStarted,
    SourceCheckedOut,
    StepFinished,
    StepPlan,
    StepStarted,
    apply,
    connect,
    encode,
    new_id,
    subjects,
)
from libs.events.embedded import EmbeddedNats
from libs.events.journal import EVENT_TYPE_HEADER, append
from libs.events.streams import ensure_streams
from libs.events.types import decode_event, event_tag
from services.gateway.projection import Projection

from .common import Result, Sizes


def job_events(job_id: str) -> list[AnyEvent]:
    """Return the 10 events of a finished two-step job, as the executor writes them."""
    run_id = new_id()
    ids = {"job_id": job_id, "run_id": run_id}
    steps = [StepPlan(name="build", type="exec"), StepPlan(name="test", type="exec")]
    events: list[AnyEvent] = [
        JobSubmitted(
            **ids,
            repository=Repository(
                url="https://git.example/team/app.git", branch="main"
            ),
            env={"GOFLAGS": "-mod=vendor"},
        ),
        JobQueued(**ids),
        RunStarted(**ids, executor_id="executor-1"),
        SourceCheckedOut(**ids, commit="0123456789abcdef0123456789abcdef01234567"),
        PipelineLoaded(**ids, image="gcc:12-bookworm", steps=steps),
    ]
    for step in steps:
        events.append(StepStarted(**ids, step=step.name))
        events.append(
            StepFinished(**ids, step=step.name, outcome="succeeded", exit_code=0)
        )
    events.append(RunFinished(**ids, outcome="succeeded", duration_s=12.5))
    return events


async def fill_stream(nc: Client, js: JetStreamContext, count: int) -> None:
    """Store `count` events of finished jobs with core publishes, then check them."""
    written = 0
    while written < count:
        job_id = new_id()
        for event in job_events(job_id)[: count - written]:
            await nc.publish(
                subjects.job_subject(job_id),
                encode(event),
                headers={EVENT_TYPE_HEADER: event_tag(event)},
            )
            written += 1
        if written % 5_000 < 10:
            await nc.flush()
    await nc.flush()
    async with asyncio.timeout(60):
        while (await js.stream_info(subjects.JOBS_STREAM)).state.messages < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def ordered_read(js: JetStreamContext, head: int) -> float:
    """Return seconds to read and decode the stream with an ordered consumer."""
    started = time.perf_counter()
    sub = await js.subscribe(
        subjects.ALL_JOBS,
        stream=subjects.JOBS_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        config=ConsumerConfig(opt_start_seq=1),
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
    )
    try:
        while True:
            msg = await sub.next_msg(timeout=30)
            decode_event(msg.data)
            if msg.metadata.sequence.stream >= head:
                return time.perf_counter() - started
    finally:
        await sub.unsubscribe()


async def projection_rebuild(js: JetStreamContext, head: int) -> float:
    """Return seconds for the gateway's projection to replay the stream."""
    projection = Projection()
    started = time.perf_counter()
    await projection.start(js)
    elapsed = time.perf_counter() - started
    await projection.stop()
    return elapsed


async def stream_benchmarks(sizes: Sizes, tmp: Path) -> list[Result]:
    """Start a private nats-server and run the projection and append benchmarks."""
    server = EmbeddedNats(tmp / "nats-events")
    await server.start()
    nc = await connect(server.url, "bench-events")
    try:
        js = nc.jetstream()
        config = load_config(environ={}, overrides={"data_dir": str(tmp)})
        await ensure_streams(js, config.nats)
        results = [await appends(js, sizes)]
        await js.purge_stream(subjects.JOBS_STREAM)
        results.insert(0, await rebuild(nc, js, sizes))
    finally:
        await nc.close()
        await server.stop()
    return results


async def rebuild(nc: Client, js: JetStreamContext, sizes: Sizes) -> Result:
    """Compare the projection's replay rate with a plain ordered read."""
    count = sizes.projection_events
    await fill_stream(nc, js, count)
    head = (await js.stream_info(subjects.JOBS_STREAM)).state.last_seq
    rates, floors = [], []
    for _ in range(max(2, sizes.repeat // 2)):
        floors.append(count / await ordered_read(js, head))
        rates.append(count / await projection_rebuild(js, head))
    return Result(
        "projection rebuild",
        "events/s",
        rates,
        floors,
        "ordered consumer + msgspec decode",
        "ratio_min",
        0.7,
        f"{count:,} events",
        higher_is_better=True,
    )


async def appends(js: JetStreamContext, sizes: Sizes) -> Result:
    """Compare `journal.append` from many jobs at once with plain async publishes."""
    jobs, per_job = sizes.append_jobs, sizes.appends_per_job

    async def chained(job_id: str) -> None:
        for _ in range(per_job):
            await append(js, JobQueued(job_id=job_id, run_id=job_id))

    async def plain(job_id: str) -> None:
        for _ in range(per_job):
            event = JobQueued(job_id=job_id, run_id=job_id)
            await js.publish(
                subjects.job_subject(job_id),
                encode(event),
                stream=subjects.JOBS_STREAM,
                headers={EVENT_TYPE_HEADER: "job.queued"},
            )

    rates, floors = [], []
    for _ in range(sizes.repeat):
        for writer, values in ((plain, floors), (chained, rates)):
            started = time.perf_counter()
            await asyncio.gather(*(writer(new_id()) for _ in range(jobs)))
            values.append(jobs * per_job / (time.perf_counter() - started))
    return Result(
        "event appends, many jobs at once",
        "events/s",
        rates,
        floors,
        "async publishes of the same payloads",
        "min",
        10_000,
        f"{jobs} jobs x {per_job} appends",
        higher_is_better=True,
    )


def rss_bytes() -> int:
    """Return this process's resident set size in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fill_projection(count: int) -> Projection:
    """Return a projection holding `count` folded two-step jobs, as replay builds it."""
    projection = Projection()
    seq = 0
    for _ in range(count):
        job_id = new_id()
        state = None
        for event in job_events(job_id):
            state = apply(state, event)
            seq += 1
        assert state is not None
        projection._insert_order(job_id)
        projection.jobs[job_id] = state
        projection.job_seq[job_id] = seq
    projection.seq = seq
    return projection


def measure_memory(count: int, traced: bool) -> float:
    """Return bytes per job of a projection of `count` jobs (RSS or tracemalloc)."""
    gc.collect()
    if traced:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
    projection = fill_projection(count)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
    assert len(projection.jobs) == count
    return (after - before) / count


async def memory_per_job(sizes: Sizes) -> Result:
    """Measure projection memory per job in fresh subprocesses, RSS and tracemalloc."""
    rss, traced = [], []
    # tracemalloc slows allocation about tenfold, so it folds fewer jobs.
    traced_jobs = min(sizes.memory_jobs, 20_000)
    for _ in range(max(2, sizes.repeat // 2)):
        for mode, values, count in (
            ("rss", rss, sizes.memory_jobs),
            ("tracemalloc", traced, traced_jobs),
        ):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.events",
                mode,
                str(count),
                stdout=asyncio.subprocess.PIPE,
            )
            output, _ = await process.communicate()
            values.append(json.loads(output)["bytes_per_job"] / 1024)
    return Result(
        "gateway projection memory per job (RSS)",
        "KB",
        rss,
        target_kind="max",
        target=2.0,
        size=f"{sizes.memory_jobs:,} two-step jobs",
        notes=[
            f"tracemalloc over {traced_jobs:,} jobs: "
            + ", ".join(f"{v:.2f}" for v in traced)
            + " KB per job"
        ],
    )


if __name__ == "__main__":
    mode_arg, count_arg = sys.argv[1:3]
    per_job = measure_memory(int(count_arg), traced=mode_arg == "tracemalloc")
    json.dump({"bytes_per_job": per_job}, sys.stdout)
