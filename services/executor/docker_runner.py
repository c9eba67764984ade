"""Everything the executor asks of Docker: images, volumes, step containers.

Each run gets one volume, mounted at /workspace in each of its step
containers. Source goes in and files come out through the archive API only.
Every container and volume carries the labels `stasis.job_id` and
`stasis.run_id`, so that whatever a crashed executor left can be found and
removed.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError
from aiodocker.volumes import DockerVolume

from libs.config import ExecutorConfig

from .capture import Stream

log = logging.getLogger(__name__)

WORKSPACE = "/workspace"
LABEL_JOB = "stasis.job_id"
LABEL_RUN = "stasis.run_id"
LABEL_STEP = "stasis.step"
_STREAM_NAMES: dict[int, Stream] = {1: "stdout", 2: "stderr"}
# The PATH that Docker gives a container whose image sets none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

OutputCallback = Callable[[Stream, bytes], Awaitable[None]]


class ImageUnavailable(Exception):
    """Raised when an image is neither present nor pullable."""


class ContainerStartFailed(Exception):
    """Raised when Docker cannot start a step container, with Docker's message."""


@dataclass
class ContainerSpec:
    """The command, environment and limits of one step container."""

    image: str
    command: list[str]
    env: Mapping[str, str]
    working_dir: str
    volume: str
    labels: dict[str, str]
    name: str | None = None


@dataclass
class ContainerResult:
    """The end state of a step container."""

    exit_code: int | None
    timed_out: bool = False
    cancelled: bool = False
    oom_killed: bool = False


@dataclass
class StopRequest:
    """Set by the caller to stop a running step; `hurry` skips the grace period."""

    requested: asyncio.Event = field(default_factory=asyncio.Event)
    hurry: asyncio.Event = field(default_factory=asyncio.Event)


class DockerRunner:
    """A thin, typed layer over aiodocker for the executor's needs."""

    def __init__(self, docker: aiodocker.Docker, config: ExecutorConfig) -> None:
        self.docker = docker
        self.config = config

    async def ensure_image(self, image: str, output: list[str]) -> None:
        """Make sure `image` is present, pulling it when allowed.

        Raises ImageUnavailable naming the image and why.
        """
        try:
            await self.docker.images.inspect(image)
            return
        except DockerError as exc:
            if exc.status != 404:
                raise
        if not self.config.pull_images:
            raise ImageUnavailable(
                f"image {image!r} is not present on the Docker host and "
                "executor.pull_images is off; load it with `docker load` or "
                "`docker pull`, or turn pulls on"
            )
        output.append(f"pulling image {image}")
        try:
            await self.docker.images.pull(image)
        except DockerError as exc:
            raise ImageUnavailable(
                f"image {image!r} is not present and could not be pulled: "
                f"{exc.message}; check the name, or load the image with "
                "`docker load`/`docker import` where no registry is reachable"
            ) from exc
        output.append(f"pulled image {image}")

    async def image_id(self, image: str) -> str:
        """Return the content-addressed id of `image`."""
        info = await self.docker.images.inspect(image)
        return str(info["Id"])

    async def image_path(self, image: str) -> str:
        """Return the PATH that `image` sets, or Docker's default when it sets none."""
        info = await self.docker.images.inspect(image)
        for entry in (info.get("Config") or {}).get("Env") or []:
            name, _, value = entry.partition("=")
            if name == "PATH":
                return str(value)
        return DEFAULT_PATH

    async def find_executable(self, container: Any, name: str, path: str) -> bool:
        """Return whether `name` is a file in one of the `path` directories.

        The check requests the file from the archive API, which works on a
        created container before it starts. It uses GET and leaves the body
        unread, because aiodocker cannot parse the empty body of the 404
        response to a HEAD request.
        """
        for directory in path.split(":"):
            if not directory.startswith("/"):
                continue
            try:
                async with self.docker._query(
                    f"containers/{container.id}/archive",
                    method="GET",
                    params={"path": f"{directory.rstrip('/')}/{name}"},
                ):
                    return True
            except DockerError as exc:
                if exc.status != 404:
                    raise
        return False

    async def create_volume(self, name: str, labels: dict[str, str]) -> str:
        """Create the run's workspace volume and return its name."""
        await self.docker.volumes.create({"Name": name, "Labels": labels})
        return name

    async def create_container(self, spec: ContainerSpec) -> Any:
        """Create (not start) a step container with the configured limits."""
        resources = self.config.resources
        config: dict[str, Any] = {
            "Image": spec.image,
            "Cmd": spec.command,
            "Env": [f"{key}={value}" for key, value in spec.env.items()],
            "WorkingDir": spec.working_dir,
            "Labels": spec.labels,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": False,
            "HostConfig": {
                "Init": True,
                "NetworkMode": self.config.network,
                "NanoCpus": int(resources.cpus * 1e9),
                "Memory": int(resources.memory),
                "PidsLimit": resources.pids,
                "Mounts": [
                    {"Type": "volume", "Source": spec.volume, "Target": WORKSPACE}
                ],
            },
        }
        return await self.docker.containers.create(config=config, name=spec.name)

    async def run(
        self,
        container: Any,
        on_output: OutputCallback,
        timeout: float,
        stop: StopRequest,
    ) -> ContainerResult:
        """Start `container`, stream its output and wait for it to exit.

        On `timeout` or `stop.requested`, every process in the container gets
        SIGTERM, then SIGKILL after the kill grace period (at once on
        `stop.hurry`).
        """
        stream = container.attach(stdout=True, stderr=True, logs=False)
        # Entering the stream attaches now, before the start, so that no
        # output of a short-lived container is missed.
        await stream.__aenter__()
        reader = asyncio.create_task(_pump(stream, on_output))
        try:
            await container.start()
        except DockerError as exc:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await stream.close()
            raise ContainerStartFailed(exc.message) from exc
        stopper = asyncio.create_task(stop.requested.wait())
        done, _ = await asyncio.wait(
            {reader, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        result = ContainerResult(exit_code=None)
        if reader not in done:
            result.timed_out = stopper not in done
            result.cancelled = stopper in done
            await self.terminate(container, stop)
        stopper.cancel()
        await reader
        await stream.close()

        status = await container.wait()
        info = await container.show()
        result.exit_code = status.get("StatusCode")
        result.oom_killed = bool(info.get("State", {}).get("OOMKilled"))
        return result

    async def terminate(self, container: Any, stop: StopRequest) -> None:
        """SIGTERM every process in `container`, then SIGKILL after the grace."""
        grace = float(self.config.timeouts.kill_grace)
        if not stop.hurry.is_set():
            await self._signal_all(container, "TERM")
            waiter = asyncio.create_task(container.wait())
            hurry = asyncio.create_task(stop.hurry.wait())
            done, _ = await asyncio.wait(
                {waiter, hurry}, timeout=grace, return_when=asyncio.FIRST_COMPLETED
            )
            for task in (waiter, hurry):
                task.cancel()
            await asyncio.gather(waiter, hurry, return_exceptions=True)
            if not done:
                log.info(
                    "container %s outlived its %gs grace", container.id[:12], grace
                )
        try:
            await container.kill(signal="SIGKILL")
        except DockerError as exc:
            if exc.status not in (404, 409):  # 409: already stopped
                raise

    async def _signal_all(self, container: Any, signal_name: str) -> None:
        # PID 1 is docker-init, which forwards signals only to its child; an
        # exec of `kill -1` reaches every other process in the container.
        try:
            execution = await container.exec(
                ["/bin/sh", "-c", f"kill -{signal_name} -1"], stdout=False
            )
            await execution.start(detach=True)
        except DockerError as exc:
            log.debug("exec kill in %s failed: %s", container.id[:12], exc)
        try:
            await container.kill(signal=f"SIG{signal_name}")
        except DockerError as exc:
            log.debug("kill of %s failed: %s", container.id[:12], exc)

    async def remove_run_resources(self, run_id: str) -> None:
        """Force-remove every container and volume labelled with `run_id`."""
        label = f"{LABEL_RUN}={run_id}"
        containers = await self.docker.containers.list(
            all=True, filters={"label": [label]}
        )
        for container in containers:
            try:
                await container.delete(force=True, v=True)
            except DockerError as exc:
                if exc.status != 404:
                    log.warning("could not remove container %s: %s", container.id, exc)
        volumes = await self.docker.volumes.list(filters={"label": [label]})
        for volume in volumes.get("Volumes") or []:
            try:
                await DockerVolume(self.docker, volume["Name"]).delete()
            except DockerError as exc:
                if exc.status != 404:
                    log.warning("could not remove volume %s: %s", volume["Name"], exc)


async def _pump(stream: Any, on_output: OutputCallback) -> None:
    while True:
        message = await stream.read_out()
        if message is None:
            return
        await on_output(_STREAM_NAMES.get(message.stream, "stdout"), message.data)
