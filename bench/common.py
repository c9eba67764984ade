"""What every benchmark shares: sizes, results, the stack and a sample repository."""

import contextlib
import json
import statistics
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiodocker

from libs.config import Config, load_config
from services.cli.client import GatewayClient
from services.cli.stack import Stack

IMAGE = "stasis-test/busybox:latest"

TargetKind = Literal["ratio_max", "ratio_min", "max", "min"]


@dataclass
class Sizes:
    """How large each benchmark is; `quick`, `default` and `full` are the presets."""

    repeat: int
    jobs_parallel: int
    log_lines: int
    latency_lines: int
    projection_events: int
    append_jobs: int
    appends_per_job: int
    sse_clients: int
    sse_lines: int
    memory_jobs: int

    @classmethod
    def preset(cls, name: str) -> "Sizes":
        """Return the sizes of preset `name`: quick, default or full."""
        presets = {
            "quick": cls(2, 4, 2_000, 20, 2_000, 10, 5, 10, 10, 1_000),
            "default": cls(5, 16, 100_000, 200, 200_000, 100, 50, 1_000, 40, 100_000),
            "full": cls(7, 32, 300_000, 500, 1_000_000, 200, 100, 1_000, 100, 100_000),
        }
        return presets[name]


@dataclass
class Result:
    """One line of the table: a measure over repetitions, its floor and target."""

    name: str
    unit: str
    values: list[float]
    floor: list[float] = field(default_factory=list)
    floor_name: str = ""
    target_kind: TargetKind = "max"
    target: float = 0.0
    size: str = ""
    higher_is_better: bool = False
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """Checks besides the target that failed, such as dropped SSE clients."""

    @property
    def median(self) -> float:
        """The median over repetitions."""
        return statistics.median(self.values)

    @property
    def ratio(self) -> float | None:
        """Median over the floor's median, or None when there is no floor."""
        if not self.floor:
            return None
        return self.median / statistics.median(self.floor)

    @property
    def met(self) -> bool:
        """Whether the median (or its ratio to the floor) meets the target."""
        if self.failures:
            return False
        if self.target_kind == "ratio_max":
            return self.ratio is not None and self.ratio <= self.target
        if self.target_kind == "ratio_min":
            return self.ratio is not None and self.ratio >= self.target
        if self.target_kind == "max":
            return self.median <= self.target
        return self.median >= self.target

    def target_text(self) -> str:
        """The target as the table shows it, e.g. `<= 1.10x floor`."""
        if self.target_kind == "ratio_max":
            return f"<= {self.target:.2f}x floor"
        if self.target_kind == "ratio_min":
            return f">= {self.target:.2f}x floor"
        sign = "<=" if self.target_kind == "max" else ">="
        return f"{sign} {format_number(self.target)} {self.unit}"


def format_number(value: float) -> str:
    """Format `value` with three significant digits and thousands separators."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def spread(values: list[float]) -> str:
    """Return `min-max` of `values`, formatted."""
    return f"{format_number(min(values))}-{format_number(max(values))}"


def percentile(values: list[float], fraction: float) -> float:
    """Return the `fraction` percentile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def make_repo(path: Path, script: str, name: str = "main") -> Path:
    """Create a git repository at `path` whose pipeline runs `script` in one step."""
    path.mkdir(parents=True)
    pipeline = {"image": IMAGE, "steps": {name: {"scripts": [script]}}}
    (path / ".stasis-ci.yaml").write_text(json.dumps(pipeline) + "\n")
    git = ["git", "-C", str(path), "-c", "user.name=b", "-c", "user.email=b@localhost"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "bench"], check=True)
    return path


def bench_config(data_dir: Path, **overrides: Any) -> Config:
    """Return a stack config for benchmarks: private data dir, no network, quiet."""
    settings: dict[str, Any] = {
        "data_dir": str(data_dir),
        "server.port": 0,
        "executor.network": "none",
        "executor.pull_images": False,
        "log_level": "WARNING",
    }
    settings.update(overrides)
    return load_config(environ={}, overrides=settings)


@contextlib.asynccontextmanager
async def running_stack(
    data_dir: Path, **overrides: Any
) -> AsyncIterator[tuple[Stack, GatewayClient]]:
    """Start embedded NATS and all four services; yield the stack and a client."""
    stack = Stack(bench_config(data_dir, **overrides))
    await stack.start()
    assert stack.gateway is not None
    try:
        async with GatewayClient(stack.gateway.url) as client:
            yield stack, client
    finally:
        await stack.stop()


async def run_job(client: GatewayClient, repo: Path) -> tuple[str, float]:
    """Submit a job of `repo`, read its SSE stream to `end`; return id and seconds."""
    started = time.perf_counter()
    accepted = await client.submit({"repository": {"url": str(repo)}})
    async for _ in client.stream(accepted["job_id"]):
        pass
    return accepted["job_id"], time.perf_counter() - started


async def raw_lifecycle(docker: aiodocker.Docker, script: str) -> float:
    """Return seconds for create, start, wait and delete of a container of `script`.

    The container gets the executor's options that change its start-up time:
    Docker's init as PID 1 and networking disabled.
    """
    started = time.perf_counter()
    container = await docker.containers.create(
        {
            "Image": IMAGE,
            "Cmd": ["sh", "-c", script],
            "HostConfig": {"Init": True, "NetworkMode": "none"},
        }
    )
    await container.start()
    await container.wait()
    await container.delete(force=True)
    return time.perf_counter() - started
