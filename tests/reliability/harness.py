"""Real processes for fault tests: nats-server nodes, services and a job audit.

Every socket is on 127.0.0.1. A `NatsNode` is a nats-server subprocess on
fixed ports with its own store, so a test can stop it and start it again on
the same port and store, or join three of them into a JetStream cluster.
"""

import asyncio
import signal
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
from nats.js import JetStreamContext

from libs.config import load_config
from libs.events import connect
from libs.events.embedded import find_nats_server, free_port
from libs.events.journal import StoredEvent, read_job
from libs.events.streams import ensure_streams
from libs.events.types import event_tag
from services.cli.client import GatewayClient
from tests.conftest import TEST_IMAGE, wait_until
from tests.e2e.helpers import ServiceProcess

FINISHED = {"succeeded", "failed", "cancelled", "timed_out", "skipped", "expired"}
NAP_PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  nap:
    scripts: ["sleep ${{NAP:-1}}", "echo slept $NAP in $CI_JOB_ID"]
"""
FAST_RECOVERY = {"STASIS_NATS_ACK_WAIT": "2s"}
"""Service environment: a lost order comes back after 2s instead of 30s."""


class NatsNode:
    """One nats-server process with JetStream, on loopback ports that stay fixed."""

    def __init__(self, store: Path, name: str = "n1") -> None:
        self.name = name
        self.store = store
        self.port = free_port()
        self.cluster_port = free_port()
        self.routes: list[int] = []
        self.log_path = store.parent / f"nats-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL of this node."""
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """Return the nats-server command line of this node."""
        args = [
            find_nats_server(),
            "--addr",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--server_name",
            self.name,
            "--jetstream",
            "--store_dir",
            str(self.store),
            "--log",
            str(self.log_path),
        ]
        if self.routes:
            routes = ",".join(f"nats://127.0.0.1:{port}" for port in self.routes)
            args += [
                "--cluster_name",
                "stasis",
                "--cluster",
                f"nats://127.0.0.1:{self.cluster_port}",
                "--routes",
                routes,
            ]
        return args

    async def start(self) -> None:
        """Start the server and wait until its client port accepts connections."""
        self.store.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        async def accepting() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"nats-server {self.name} exited: {self.tail()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await wait_until(accepting, timeout=15)

    def terminate(self) -> None:
        """Stop the server with SIGTERM, as an operator's restart would."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a lost node would stop."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        self.process.wait(timeout=20)

    def tail(self) -> str:
        """Return the end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-1500:]
        except OSError:
            return "(no log)"


async def start_cluster(root: Path, size: int = 3) -> list[NatsNode]:
    """Start `size` nodes routed to each other and wait for JetStream."""
    nodes = [NatsNode(root / f"store-{i}", name=f"n{i}") for i in range(1, size + 1)]
    for node in nodes:
        node.routes = [other.cluster_port for other in nodes if other is not node]
    for node in nodes:
        await node.start()
    return nodes


async def create_streams(url: str, replicas: int = 1) -> None:
    """Create the Stasis streams, retrying while a new cluster elects leaders."""
    config = load_config(environ={}, overrides={"nats.replicas": replicas})

    async def created() -> bool:
        nc = await nats.connect(url.split(","), connect_timeout=2)
        try:
            await ensure_streams(nc.jetstream(timeout=5.0), config.nats)
        except Exception:
            return False
        finally:
            await nc.close()
        return True

    await wait_until(created, timeout=60, interval=0.5)


class Services:
    """`stasis <service>` subprocesses on one NATS URL, with one data dir."""

    def __init__(self, nats_url: str, data_dir: Path, **env: str) -> None:
        self.nats_url = nats_url
        self.data_dir = data_dir
        self.env = {**FAST_RECOVERY, **env}
        self.processes: dict[str, ServiceProcess] = {}

    def add(self, name: str, service: str | None = None, **env: str) -> ServiceProcess:
        """Create (but do not start) a service process called `name`."""
        process = ServiceProcess(
            service or name, self.nats_url, self.data_dir, **{**self.env, **env}
        )
        self.processes[name] = process
        return process

    async def start(self, *names: str) -> None:
        """Start the named processes; the gateway last, because it is awaited."""
        for name in sorted(names, key=lambda n: n == "gateway"):
            await self.processes[name].start()

    @property
    def gateway(self) -> ServiceProcess:
        """The gateway process."""
        return self.processes["gateway"]

    def exited(self) -> dict[str, int]:
        """Return the exit code of each process that has ended."""
        codes = {}
        for name, process in self.processes.items():
            assert process.process is not None
            code = process.process.poll()
            if code is not None:
                codes[name] = code
        return codes

    def stop(self) -> None:
        """Stop every process with SIGTERM."""
        for process in self.processes.values():
            process.stop()

    def log_of(self, name: str) -> str:
        """Return the output of one process."""
        return self.processes[name].log_path.read_text(errors="replace")


async def submit_naps(
    client: GatewayClient, repo: Path, naps: Iterable[float]
) -> list[str]:
    """Submit one job of `repo` per nap (seconds of sleep); return the job ids."""
    jobs = []
    for nap in naps:
        body = {"repository": {"url": str(repo)}, "env": {"NAP": str(nap)}}
        accepted = await client.submit(body)
        jobs.append(str(accepted["job_id"]))
    return jobs


async def wait_all_finished(
    client: GatewayClient, job_ids: list[str], timeout: float = 90.0
) -> dict[str, dict[str, Any]]:
    """Wait until every job's last run has an outcome; return the jobs by id."""
    jobs: dict[str, dict[str, Any]] = {}

    async def done() -> bool:
        for job_id in job_ids:
            if job_id in jobs:
                continue
            try:
                job = await client.request("GET", f"/api/v1/jobs/{job_id}")
            except Exception:
                return False  # the gateway may be reconnecting to NATS
            if job["runs"][-1]["status"] in FINISHED:
                jobs[job_id] = job
        return len(jobs) == len(job_ids)

    try:
        await wait_until(done, timeout=timeout, interval=0.25)
    except TimeoutError:
        missing = sorted(set(job_ids) - set(jobs))
        message = f"jobs without an outcome after {timeout}s: {missing}"
        raise AssertionError(message) from None
    return jobs


@dataclass
class RunAudit:
    """What the job-events stream holds for one run."""

    queued: int = 0
    dispatched: int = 0
    started_attempts: list[int] = field(default_factory=list)
    lost_attempts: list[int] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)
    after_finish: list[str] = field(default_factory=list)
    """Types of this run's events stored after its `run.finished`."""


def audit_runs(events: list[StoredEvent]) -> dict[str, RunAudit]:
    """Count, per run, the events that must appear once or in order."""
    runs: dict[str, RunAudit] = defaultdict(RunAudit)
    for stored in events:
        event = stored.event
        run = runs[event.run_id]
        kind = event_tag(event)
        if run.outcomes:
            run.after_finish.append(kind)
        if kind == "job.queued":
            run.queued += 1
        elif kind == "run.dispatched":
            run.dispatched += 1
        elif kind == "run.started":
            run.started_attempts.append(event.attempt)  # type: ignore[union-attr]
        elif kind == "run.attempt_lost":
            run.lost_attempts.append(event.attempt)  # type: ignore[union-attr]
        elif kind == "run.finished":
            run.outcomes.append(event.outcome)  # type: ignore[union-attr]
    return dict(runs)


async def read_events(url: str, job_id: str) -> list[StoredEvent]:
    """Return a job's stored events, read straight from the stream."""
    nc = await connect(url, "reliability-audit")
    try:
        js: JetStreamContext = nc.jetstream(timeout=10.0)
        return await read_job(js, job_id)
    finally:
        await nc.close()


async def assert_one_outcome_each(
    url: str, job_ids: list[str], nothing_after_finish: bool = True
) -> dict[str, RunAudit]:
    """Assert every run of every job was queued once, started once per attempt,
    and finished exactly once (with nothing of it stored after the finish,
    unless `nothing_after_finish` is false)."""
    audits: dict[str, RunAudit] = {}
    for job_id in job_ids:
        runs = audit_runs(await read_events(url, job_id))
        for run_id, run in runs.items():
            where = f"job {job_id} run {run_id}"
            assert len(run.outcomes) == 1, f"{where}: outcomes {run.outcomes}"
            assert run.queued == 1, f"{where}: queued {run.queued} times"
            assert run.dispatched <= 1, f"{where}: dispatched {run.dispatched} times"
            attempts = run.started_attempts
            assert attempts == list(range(1, len(attempts) + 1)), (
                f"{where}: started attempts {attempts}"
            )
            assert not Counter(run.lost_attempts) - Counter(attempts), (
                f"{where}: lost attempts {run.lost_attempts} never started"
            )
            if nothing_after_finish:
                assert run.after_finish == [], f"{where}: after {run.after_finish}"
            audits[run_id] = run
    return audits


def docker_leftovers(job_ids: Iterable[str]) -> list[str]:
    """Return the containers and volumes still labelled with one of the jobs."""
    found = []
    for job_id in job_ids:
        label = f"label=stasis.job_id={job_id}"
        for args in (
            ["docker", "ps", "-aq", "--filter", label],
            ["docker", "volume", "ls", "-q", "--filter", label],
        ):
            result = subprocess.run(args, check=True, capture_output=True, text=True)
            found += result.stdout.split()
    return found
