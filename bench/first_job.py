"""Time a one-step job through the whole system beside plain Docker.

Reports, as medians over several repetitions on this machine:
- POST /api/v1/jobs to the step's first log line on SSE, and to `end`;
- `docker run --rm` of the same script (the CLI, a process per run);
- aiodocker create, start, wait and delete of the same container (the floor).

Run: `.venv/bin/python -m bench.first_job [--repeat N]` with Docker running and
the test image built (`scripts/build-test-image.sh`).
"""

import argparse
import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiodocker

from libs.config import load_config
from services.cli.client import GatewayClient
from services.cli.stack import Stack

IMAGE = "stasis-test/busybox:latest"
SCRIPT = "echo hello"


def make_repo(path: Path) -> None:
    """Create a one-step sample repository at `path`."""
    path.mkdir(parents=True)
    (path / ".stasis-ci.yaml").write_text(
        f"image: {IMAGE}\nsteps:\n  hello: {{scripts: ['{SCRIPT}']}}\n"
    )
    git = ["git", "-C", str(path), "-c", "user.name=b", "-c", "user.email=b@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], check=True)


async def time_job(client: GatewayClient, repo: Path) -> tuple[float, float]:
    """Return seconds from POST to the first step log line, and to `end`."""
    started = time.perf_counter()
    accepted = await client.submit({"repository": {"url": str(repo)}})
    first_log = 0.0
    async for sse in client.stream(accepted["job_id"]):
        is_step_log = sse.event == "log" and json.loads(sse.data)["step"] == "hello"
        if is_step_log and not first_log:
            first_log = time.perf_counter() - started
    return first_log, time.perf_counter() - started


async def time_raw_lifecycle(docker: aiodocker.Docker) -> float:
    """Return seconds for create, start, wait and delete of the same container."""
    started = time.perf_counter()
    container = await docker.containers.create(
        {
            "Image": IMAGE,
            "Cmd": ["sh", "-c", SCRIPT],
            "HostConfig": {"NetworkMode": "none"},
        }
    )
    await container.start()
    await container.wait()
    await container.delete(force=True)
    return time.perf_counter() - started


def time_docker_run() -> float:
    """Return seconds for `docker run --rm` of the same script."""
    started = time.perf_counter()
    subprocess.run(
        ["docker", "run", "--rm", "--network", "none", IMAGE, "sh", "-c", SCRIPT],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


async def main(repeat: int) -> None:
    """Run every measurement `repeat` times and print the medians in ms."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        make_repo(repo)
        config = load_config(
            environ={},
            overrides={
                "data_dir": str(Path(tmp) / "data"),
                "server.port": 0,
                "executor.network": "none",
                "executor.pull_images": False,
                "log_level": "WARNING",
            },
        )
        stack = Stack(config)
        await stack.start()
        assert stack.gateway is not None
        firsts, totals, raws, runs = [], [], [], []
        try:
            async with (
                GatewayClient(stack.gateway.url) as client,
                aiodocker.Docker() as docker,
            ):
                await time_job(client, repo)  # warm-up
                for _ in range(repeat):
                    first, total = await time_job(client, repo)
                    firsts.append(first)
                    totals.append(total)
                    raws.append(await time_raw_lifecycle(docker))
                    runs.append(await asyncio.to_thread(time_docker_run))
        finally:
            await stack.stop()

    def ms(values: list[float]) -> str:
        return (
            f"{statistics.median(values) * 1000:7.1f} ms (min {min(values) * 1000:.1f})"
        )

    print(f"POST to first log line:      {ms(firsts)}")
    print(f"POST to end (whole job):     {ms(totals)}")
    print(f"docker run --rm, same step:  {ms(runs)}")
    print(f"aiodocker lifecycle (floor): {ms(raws)}")
    ratio = statistics.median(totals) / statistics.median(raws)
    print(f"job / floor:                 {ratio:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=10, help="repetitions (default 10)"
    )
    asyncio.run(main(parser.parse_args().repeat))
