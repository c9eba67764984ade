"""Live logs: lines per second and latency to an SSE client, and 1,000 clients."""

import asyncio
import json
import sys
import time
from pathlib import Path

import aiodocker

from services.cli.client import GatewayClient

from .common import IMAGE, Result, Sizes, make_repo, percentile, running_stack

# A step that prints `t <n> <wall time in µs>` every `interval` seconds. The
# container shares the host's clock, so the receiver subtracts the two.
TIMED_LINES = (
    'for i in $(seq 1 {count}); do echo "t $i $EPOCHREALTIME"; sleep {interval}; done'
)


async def sse_line_times(client: GatewayClient, repo: Path) -> list[tuple[float, str]]:
    """Submit a job and return (receipt wall time, line) for each step stdout line.

    The first item is (receipt time of `step.started`, "").
    """
    accepted = await client.submit({"repository": {"url": str(repo)}})
    lines: list[tuple[float, str]] = []
    partial = ""
    async for event in client.stream(accepted["job_id"]):
        if event.event == "step.started":
            lines.insert(0, (time.time(), ""))
        if event.event != "log":
            continue
        received = time.time()
        chunk = json.loads(event.data)
        if chunk["step"] == "main" and chunk["stream"] == "stdout":
            # A chunk may end inside a line when the step's write did.
            *complete, partial = (partial + chunk["data"]).split("\n")
            lines.extend((received, line) for line in complete)
    return lines


async def raw_line_rate(docker: aiodocker.Docker, count: int) -> float:
    """Return lines/s of `seq 1 count` read through aiodocker's attach stream.

    Timed from the start request to the last byte received. The SSE figure is
    timed from `step.started`, which the executor appends just before it
    attaches to and starts the container.
    """
    container = await docker.containers.create(
        {
            "Image": IMAGE,
            "Cmd": ["sh", "-c", f"seq 1 {count}"],
            "AttachStdout": True,
            "AttachStderr": True,
            "HostConfig": {"Init": True, "NetworkMode": "none"},
        }
    )
    try:
        stream = container.attach(stdout=True, stderr=True, logs=False)
        await stream.__aenter__()
        first = time.perf_counter()
        await container.start()
        last = first
        newlines = 0
        while (message := await stream.read_out()) is not None:
            last = time.perf_counter()
            newlines += message.data.count(b"\n")
        await stream.close()
        await container.wait()
    finally:
        await container.delete(force=True)
    assert newlines == count, f"read {newlines} lines of {count}"
    return count / (last - first)


async def log_rate_and_latency(sizes: Sizes, tmp: Path) -> list[Result]:
    """Measure log lines/s against the aiodocker floor, and line latency."""
    count = sizes.log_lines
    rate_repo = make_repo(tmp / "seq-repo", f"seq 1 {count}")
    timed = TIMED_LINES.format(count=sizes.latency_lines, interval=0.01)
    latency_repo = make_repo(tmp / "latency-repo", timed)
    rates, floors, p99s, p50s = [], [], [], []
    async with (
        running_stack(tmp / "logs") as (_, client),
        aiodocker.Docker() as docker,
    ):
        await sse_line_times(client, rate_repo)
        for _ in range(sizes.repeat):
            lines = await sse_line_times(client, rate_repo)
            numbers = [item for item in lines if item[1].isdigit()]
            assert len(numbers) == count, f"SSE got {len(numbers)} lines of {count}"
            rates.append(count / (numbers[-1][0] - lines[0][0]))
            floors.append(await raw_line_rate(docker, count))
            latencies = [
                received - float(line.split()[2])
                for received, line in await sse_line_times(client, latency_repo)
                if line.startswith("t ")
            ]
            p99s.append(percentile(latencies, 0.99) * 1000)
            p50s.append(percentile(latencies, 0.5) * 1000)
    return [
        Result(
            "log lines per second, container to SSE",
            "lines/s",
            rates,
            floors,
            "aiodocker attach read of the same output",
            "ratio_min",
            0.6,
            f"`seq 1 {count}`",
            higher_is_better=True,
        ),
        Result(
            "log latency p99, print to SSE receipt",
            "ms",
            p99s,
            target_kind="max",
            target=100.0,
            size=f"{sizes.latency_lines} lines, 10 ms apart",
            notes=[f"p50 per repetition: {', '.join(f'{v:.1f}' for v in p50s)} ms"],
        ),
    ]


async def sse_fan_out(sizes: Sizes, tmp: Path) -> Result:
    """Run many SSE clients of one job's live log in a separate process."""
    clients = sizes.sse_clients
    wait = 2 + clients / 100  # seconds for every client to connect first
    script = f"sleep {wait:g}; " + TIMED_LINES.format(
        count=sizes.sse_lines, interval=0.05
    )
    repo = make_repo(tmp / "fan-out-repo", script)
    bound = wait + sizes.sse_lines * 0.05 + 60
    p99s, dropped_counts, counted = [], [], []
    async with running_stack(tmp / "fan-out") as (stack, client):
        assert stack.gateway is not None
        for _ in range(max(1, sizes.repeat // 2)):
            accepted = await client.submit({"repository": {"url": str(repo)}})
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.sse_clients",
                stack.gateway.url,
                accepted["job_id"],
                str(clients),
                str(bound),
                stdout=asyncio.subprocess.PIPE,
            )
            output, _ = await process.communicate()
            summary = json.loads(output)
            start = summary["all_connected_at"] or float("inf")
            latencies = [
                late for printed, late in summary["latencies"] if printed > start
            ]
            dropped = [
                c
                for c in summary["clients"]
                if c["error"] or not c["ended"] or c.get("lines") != sizes.sse_lines
            ]
            dropped_counts.append(len(dropped))
            counted.append(len(latencies))
            p99s.append(
                percentile(latencies, 0.99) * 1000 if latencies else float("inf")
            )
    failures = [f"{sum(dropped_counts)} clients dropped"] if any(dropped_counts) else []
    return Result(
        f"{clients} SSE clients on one live log, p99",
        "ms",
        p99s,
        target_kind="max",
        target=100.0,
        size=f"{clients} clients x {sizes.sse_lines} lines, 50 ms apart",
        notes=[
            f"clients dropped per repetition: {dropped_counts}",
            f"line receipts after every client connected: {counted}",
        ],
        failures=failures,
    )
