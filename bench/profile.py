"""Profile the slowest path, a one-step job, with pyinstrument."""

from pathlib import Path

import aiodocker
from pyinstrument import Profiler
from pyinstrument.renderers import ConsoleRenderer

from .common import make_repo, run_job, running_stack
from .jobs import TRUE_SCRIPT


async def profile_one_step(jobs: int, tmp: Path, top: int = 25) -> list[str]:
    """Run `jobs` one-step jobs under pyinstrument; return the top self-time lines.

    The whole stack runs in this process, so the samples cover the gateway,
    scheduler, executor and logsink together. Time the process spends waiting
    for Docker or NATS shows as the event loop's `select`.
    """
    repo = make_repo(tmp / "profile-repo", TRUE_SCRIPT)
    async with running_stack(tmp / "profile") as (_, client), aiodocker.Docker():
        await run_job(client, repo)
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        for _ in range(jobs):
            await run_job(client, repo)
        profiler.stop()
    renderer = ConsoleRenderer(
        unicode=False, color=False, flat=True, time="percent_of_total"
    )
    lines = [line.rstrip() for line in profiler.output(renderer).splitlines()]
    entries = [line for line in lines if "%" in line and "/" in line]
    return entries[:top]
