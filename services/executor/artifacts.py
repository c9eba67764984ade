"""Collecting a step's artifacts out of its container and storing them.

The workspace comes out through Docker's archive API as a tar stream, spooled
to a temporary file on the executor host; `libs.artifacts` picks the files the
step's patterns name, writes one archive per step and puts it in the
configured store. The archive's metadata becomes an `artifact.stored` event.
A collection problem is recorded and logged but never changes the step's
outcome, except a total over `artifacts.max_bytes_per_job`, which fails the run.
"""

import asyncio
import hashlib
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import aiodocker

from libs.artifacts import ArtifactError, ArtifactTooLarge, collect_from_tar
from libs.artifacts.from_config import artifact_key, store_from_config
from libs.config import Config
from libs.events import AnyEvent, ArtifactStored, ArtifactWarning

from .docker_runner import WORKSPACE
from .logs import StepLog

log = logging.getLogger(__name__)

Emit = Callable[[AnyEvent, str], Awaitable[None]]


class ArtifactCollector:
    """Collects and stores the artifacts of each step of one run attempt."""

    def __init__(
        self,
        config: Config,
        docker: aiodocker.Docker,
        emit: Emit,
        job_id: str,
        run_id: str,
        attempt: int,
    ) -> None:
        self.config = config
        self.docker = docker
        self.emit = emit
        self.job_id = job_id
        self.run_id = run_id
        self.attempt = attempt
        self.too_large: str = ""
        """Set to the reason when a step's files exceeded the size limit."""

    async def collect(
        self, container: Any, step: str, patterns: tuple[str, ...], step_log: StepLog
    ) -> None:
        """Store the files of `container`'s workspace that `patterns` name."""
        spool = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in finally
            prefix="stasis-workspace-", suffix=".tar", delete=False
        )
        spool.close()
        try:
            await self._download_workspace(container, spool.name)
            await self._collect_file(spool.name, step, patterns, step_log)
        except ArtifactTooLarge as exc:
            self.too_large = str(exc)
            await self._warn(step, str(exc), step_log)
        except (ArtifactError, aiodocker.DockerError, OSError) as exc:
            await self._warn(
                step, f"artifacts of step {step!r} not stored: {exc}", step_log
            )
        finally:
            os.unlink(spool.name)

    async def _download_workspace(self, container: Any, path: str) -> None:
        # aiodocker's get_archive reads the whole tar into memory; stream it
        # to disk instead, because a workspace can be gigabytes.
        async with self.docker._query(
            f"containers/{container.id}/archive",
            method="GET",
            params={"path": WORKSPACE},
        ) as response:
            with open(path, "wb") as spool:  # noqa: ASYNC230 - small blocking writes
                async for block in response.content.iter_chunked(256 * 1024):
                    spool.write(block)

    async def _collect_file(
        self, path: str, step: str, patterns: tuple[str, ...], step_log: StepLog
    ) -> None:
        settings = self.config.artifacts
        with open(path, "rb") as tar_file:  # noqa: ASYNC230 - read in a thread below
            collected = await asyncio.to_thread(
                collect_from_tar,
                tar_file,
                patterns,
                root=WORKSPACE.strip("/"),
                max_bytes=int(settings.max_bytes_per_job),
            )
        with collected:
            for warning in collected.warnings:
                await self._warn(step, warning, step_log)
            if not collected.entries:
                return
            archive = await asyncio.to_thread(collected.write_archive, settings.format)  # type: ignore[arg-type]
            name = f"{step}.{archive.format}"
            key = artifact_key(self.job_id, self.run_id, name)
            async with store_from_config(self.config) as store:
                stored = await store.put(key, archive.path, archive.content_type)
        await self.emit(
            ArtifactStored(
                job_id=self.job_id,
                run_id=self.run_id,
                step=step,
                name=name,
                key=key,
                size=stored.size,
                sha256=stored.sha256,
                format=archive.format,
                storage_url=stored.url,
                content_type=archive.content_type,
            ),
            f"{step}:artifact",
        )
        await step_log.note(
            f"stored artifact {name}: {archive.entry_count} entries, "
            f"{stored.size} bytes, sha256 {stored.sha256}"
        )

    async def _warn(self, step: str, message: str, step_log: StepLog) -> None:
        log.warning("run %s step %s: %s", self.run_id, step, message)
        await step_log.note(f"warning: {message}")
        await self.emit(
            ArtifactWarning(
                job_id=self.job_id, run_id=self.run_id, step=step, message=message
            ),
            f"{step}:artifact-warning:{hashlib.sha256(message.encode()).hexdigest()[:16]}",
        )
