"""Measure the cost of `journal.append` against a plain JetStream publish.

Run with `python -m tests.scaling.bench_append`. It starts a private
nats-server on loopback and appends events one by one, each awaited before the
next, to one job and to 100 jobs at once (one writer per job). The plain
publish stores the same event with the same headers and no hash chain, which
is what `append` did before events carried `prev_hash`.
"""

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable

from libs.config import load_config
from libs.events import JobQueued, connect, encode, new_id, subjects
from libs.events.embedded import EmbeddedNats
from libs.events.journal import EVENT_TYPE_HEADER, append
from libs.events.streams import ensure_streams

Writer = Callable[[str], Awaitable[None]]


async def _measure(writer: Writer, jobs: int, appends_per_job: int) -> list[float]:
    latencies: list[float] = []

    async def one_job(job_id: str) -> None:
        for _ in range(appends_per_job):
            start = time.perf_counter()
            await writer(job_id)
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(one_job(new_id()) for _ in range(jobs)))
    return latencies


def _report(name: str, jobs: int, latencies: list[float], elapsed: float) -> None:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1000
    rate = len(latencies) / elapsed
    print(
        f"{name:<8} jobs={jobs:<4} appends={len(latencies):<6} "
        f"p50={p50:.3f} ms  p99={p99:.3f} ms  {rate:,.0f} appends/s"
    )


async def main() -> None:
    """Start nats-server, run both writers at both concurrencies, print results."""
    with tempfile.TemporaryDirectory(prefix="stasis-bench-") as store:
        server = EmbeddedNats(store)
        await server.start()
        nc = await connect(server.url, "bench")
        js = nc.jetstream()
        config = load_config(environ={}, overrides={"data_dir": store})
        await ensure_streams(js, config.nats)

        async def plain(job_id: str) -> None:
            event = JobQueued(job_id=job_id, run_id=job_id)
            await js.publish(
                subjects.job_subject(job_id),
                encode(event),
                stream=subjects.JOBS_STREAM,
                headers={EVENT_TYPE_HEADER: "job.queued"},
            )

        async def chained(job_id: str) -> None:
            await append(js, JobQueued(job_id=job_id, run_id=job_id))

        try:
            for jobs, per_job in ((1, 2000), (100, 50)):
                for name, writer in (("plain", plain), ("append", chained)):
                    await _measure(writer, jobs, 20)  # warm-up
                    start = time.perf_counter()
                    latencies = await _measure(writer, jobs, per_job)
                    _report(name, jobs, latencies, time.perf_counter() - start)
        finally:
            await nc.close()
            await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
