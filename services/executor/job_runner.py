"""Running one attempt of one run: clone, load the pipeline, run its steps.

The runner owns every resource it makes (clone directory, volume, step
containers) and removes all of them before it returns, whatever the outcome.
It appends the step events itself; the run's start and finish belong to the
executor service, which guards them against a second executor.
"""

import asyncio
import logging
import shlex
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from libs.config import Config
from libs.events import (
    AnyEvent,
    JobState,
    PipelineLoaded,
    SourceCheckedOut,
    StepFinished,
    StepPlan,
    StepStarted,
)
from libs.events.subjects import SYSTEM_STEP
from libs.pipeline import Pipeline, PipelineError, Step, load_pipeline
from libs.pipeline.expressions import compile_expression

from .docker_runner import (
    LABEL_JOB,
    LABEL_RUN,
    LABEL_STEP,
    WORKSPACE,
    ContainerSpec,
    DockerRunner,
    ImageUnavailable,
    StopRequest,
)
from .logs import StepLog
from .workspace import (
    PIPELINE_FILE,
    CloneError,
    clone,
    make_workdir,
    pack,
    remove_workdir,
)

log = logging.getLogger(__name__)

Emit = Callable[[AnyEvent, str], Awaitable[None]]


@dataclass
class RunResult:
    """The outcome of one attempt of a run, for the `run.finished` event."""

    outcome: str
    reason: str = ""
    last_log_seq: int = 0


@dataclass
class _Progress:
    failed: bool = False
    timed_out: bool = False
    reason: str = ""
    last_log_seq: int = 0
    uploaded: bool = False
    first_failure: str = ""
    step_outcomes: dict[str, str] = field(default_factory=dict)


class JobRunner:
    """Runs one attempt of one run of `job`; see the module docstring."""

    def __init__(
        self,
        config: Config,
        docker: DockerRunner,
        js: Any,
        job: JobState,
        run_id: str,
        attempt: int,
        emit: Emit,
        stop: StopRequest,
    ) -> None:
        self.config = config
        self.docker = docker
        self.js = js
        self.job = job
        self.run_id = run_id
        self.attempt = attempt
        self.emit = emit
        self.stop = stop
        self.volume = f"stasis-{run_id}"
        self.labels = {LABEL_JOB: job.job_id, LABEL_RUN: run_id}
        self.commit = ""
        self._progress = _Progress()

    async def run(self) -> RunResult:
        """Run the whole attempt and return its outcome."""
        system = StepLog(
            self.js, self.job.job_id, self.run_id, SYSTEM_STEP, self.attempt
        )
        system.start()
        workdir = make_workdir(self.config.workspace_root, self.run_id)
        try:
            result = await self._run(system, workdir)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("run %s of job %s crashed", self.run_id, self.job.job_id)
            await system.note(f"internal error: {exc}")
            result = RunResult("failed", f"internal error in the executor: {exc}")
        finally:
            await self._cleanup(workdir, system)
        result.last_log_seq = max(self._progress.last_log_seq, system.last_stream_seq)
        return result

    async def _cleanup(self, workdir: Path, system: StepLog) -> None:
        try:
            await asyncio.shield(self.docker.remove_run_resources(self.run_id))
        except Exception:
            log.exception("removing containers of run %s failed", self.run_id)
        remove_workdir(workdir)
        await system.close()

    async def _run(self, system: StepLog, workdir: Path) -> RunResult:
        pipeline = await self._prepare(system, workdir)
        if isinstance(pipeline, RunResult):
            return pipeline

        await self.docker.create_volume(self.volume, self.labels)
        archive = Path(
            tempfile.mkstemp(prefix="src-", suffix=".tar", dir=workdir.parent)[1]
        )
        try:
            await asyncio.to_thread(pack, workdir / "src", archive)
            self._archive = archive
            deadline = time.monotonic() + self._job_timeout(pipeline)
            for step in pipeline.ordered_steps():
                await self._run_step(pipeline, step, deadline)
        finally:
            archive.unlink(missing_ok=True)
        return self._result()

    async def _prepare(self, system: StepLog, workdir: Path) -> Pipeline | RunResult:
        repository = self.job.repository
        output: list[str] = []
        await system.note(f"cloning {repository.url}")
        try:
            checkout = await clone(
                repository,
                workdir / "src",
                float(self.config.executor.timeouts.clone),
                output,
            )
        except CloneError as exc:
            for line in output:
                await system.note(line)
            return RunResult("failed", f"clone failed: {exc}")
        self.commit = checkout.commit
        await self.emit(
            SourceCheckedOut(
                job_id=self.job.job_id,
                run_id=self.run_id,
                commit=checkout.commit,
                branch=checkout.branch,
            ),
            "checked_out",
        )
        await system.note(f"checked out {checkout.commit}")

        pipeline_path = checkout.path / PIPELINE_FILE
        try:
            text = await asyncio.to_thread(pipeline_path.read_text, encoding="utf-8")
        except FileNotFoundError:
            reason = (
                f"{repository.url} has no {PIPELINE_FILE} at commit "
                f"{checkout.commit[:12]}; add one at the repository root"
            )
            await system.note(reason)
            return RunResult("failed", reason)
        except (OSError, UnicodeDecodeError) as exc:
            return RunResult("failed", f"cannot read {PIPELINE_FILE}: {exc}")
        try:
            pipeline = load_pipeline(text, source=PIPELINE_FILE)
        except PipelineError as exc:
            await system.note(str(exc))
            return RunResult("failed", f"invalid pipeline: {exc}")

        await self.emit(
            PipelineLoaded(
                job_id=self.job.job_id,
                run_id=self.run_id,
                image=pipeline.image,
                steps=[
                    StepPlan(name=s.name, type=s.type) for s in pipeline.ordered_steps()
                ],
            ),
            "pipeline",
        )
        try:
            await self.docker.ensure_image(pipeline.image, output)
        except ImageUnavailable as exc:
            await system.note(str(exc))
            return RunResult("failed", str(exc))
        for line in output:
            await system.note(line)
        return pipeline

    def _job_timeout(self, pipeline: Pipeline) -> float:
        limit = float(self.config.executor.timeouts.job)
        if pipeline.timeout is not None:
            return min(pipeline.timeout, limit)
        return limit

    def _result(self) -> RunResult:
        progress = self._progress
        if self.stop.requested.is_set():
            return RunResult("cancelled", "cancelled on request")
        if progress.timed_out:
            return RunResult("timed_out", progress.reason)
        if progress.failed:
            return RunResult("failed", progress.reason)
        return RunResult("succeeded")

    def _skip_reason(self, pipeline: Pipeline, step: Step, env: dict[str, str]) -> str:
        progress = self._progress
        broken = progress.failed or progress.timed_out or self.stop.requested.is_set()
        if step.when == "on_success" and broken:
            return "an earlier step failed, timed out or was cancelled"
        if step.when == "on_failure" and not broken:
            return "no earlier step failed (when: on_failure)"
        if step.if_ is not None and not compile_expression(step.if_).evaluate(env):
            return f"if condition {step.if_!r} is false"
        return ""

    async def _run_step(self, pipeline: Pipeline, step: Step, deadline: float) -> None:
        env = self._step_env(pipeline, step, attempt=1)
        reason = self._skip_reason(pipeline, step, env)
        if reason:
            await self._emit_step_finished(
                step.name, "skipped", 0, None, 0.0, reason, 0
            )
            return

        for attempt in range(1, step.retry.max_attempts + 1):
            if attempt > 1:
                await asyncio.sleep(step.retry.delay_before(attempt))
            outcome = await self._run_attempt(pipeline, step, attempt, deadline)
            if outcome in ("succeeded", "cancelled", "timed_out"):
                break
            if self.stop.requested.is_set() or time.monotonic() >= deadline:
                break
        self._record(step, outcome)

    def _record(self, step: Step, outcome: str) -> None:
        progress = self._progress
        progress.step_outcomes[step.name] = outcome
        if outcome == "succeeded" or step.continue_on_error:
            return
        if outcome == "timed_out":
            progress.timed_out = True
            progress.reason = progress.reason or f"step {step.name!r} timed out"
        elif outcome == "failed":
            progress.failed = True
            progress.reason = progress.reason or f"step {step.name!r} failed"

    async def _run_attempt(
        self, pipeline: Pipeline, step: Step, attempt: int, deadline: float
    ) -> str:
        env = self._step_env(pipeline, step, attempt)
        step_limit = float(self.config.executor.timeouts.step)
        if step.timeout is not None:
            step_limit = min(step_limit, step.timeout)
        remaining = deadline - time.monotonic()
        always = step.when == "always"
        if always and remaining <= 0:
            # A clean-up step still runs after a timeout or cancel, for a bounded time.
            remaining = float(self.config.executor.timeouts.kill_grace) * 3
        timeout = max(0.0, min(step_limit, remaining))
        hits_job_deadline = timeout < step_limit

        container = await self.docker.create_container(
            ContainerSpec(
                image=pipeline.image,
                command=[
                    step.shell or pipeline.shell,
                    "-c",
                    build_script(step.scripts),
                ],
                env=env,
                working_dir=_working_dir(step),
                volume=self.volume,
                labels={**self.labels, LABEL_STEP: step.name},
            )
        )
        if not self._progress.uploaded:
            # aiohttp streams an open file in a thread; the archive can be large.
            with open(self._archive, "rb") as source:  # noqa: ASYNC230
                await container.put_archive(WORKSPACE, source)
            self._progress.uploaded = True

        step_log = StepLog(self.js, self.job.job_id, self.run_id, step.name, attempt)
        step_log.start()
        await self.emit(
            StepStarted(
                job_id=self.job.job_id,
                run_id=self.run_id,
                step=step.name,
                attempt=attempt,
            ),
            f"{step.name}:{attempt}:started",
        )
        started = time.monotonic()
        stop = self.stop if not always else StopRequest()
        try:
            result = await self.docker.run(container, step_log.write, timeout, stop)
        finally:
            last_seq = await step_log.close()
            await container.delete(force=True)
        duration = time.monotonic() - started

        outcome, reason = _classify(result, timeout)
        if result.timed_out and hits_job_deadline and not always:
            reason = f"the job's time limit ran out during step {step.name!r}"
        self._progress.last_log_seq = max(self._progress.last_log_seq, last_seq)
        await self._emit_step_finished(
            step.name, outcome, attempt, result.exit_code, duration, reason, last_seq
        )
        return outcome

    async def _emit_step_finished(
        self,
        step: str,
        outcome: str,
        attempt: int,
        exit_code: int | None,
        duration: float,
        reason: str,
        last_seq: int,
    ) -> None:
        await self.emit(
            StepFinished(
                job_id=self.job.job_id,
                run_id=self.run_id,
                step=step,
                outcome=outcome,  # type: ignore[arg-type]
                attempt=attempt,
                exit_code=exit_code,
                duration_s=round(duration, 3),
                reason=reason,
                last_log_seq=last_seq,
            ),
            f"{step}:{attempt}:finished",
        )

    def _step_env(self, pipeline: Pipeline, step: Step, attempt: int) -> dict[str, str]:
        job = self.job
        predefined = {
            "CI": "true",
            "CI_JOB_ID": job.job_id,
            "CI_RUN_ID": self.run_id,
            "CI_COMMIT_SHA": self.commit,
            "CI_BRANCH": job.repository.branch or "",
            "CI_TAG": "",
            "CI_REPOSITORY_URL": job.repository.url,
            "CI_WORKSPACE": WORKSPACE,
            "CI_STEP_NAME": step.name,
            "CI_STEP_ATTEMPT": str(attempt),
            "CI_TRIGGER": job.trigger,
        }
        return pipeline.step_env(step, predefined, job.env)


def build_script(commands: tuple[str, ...] | list[str]) -> str:
    """Return a shell script that echoes each command, runs it, and stops on failure."""
    lines = ["set -e"]
    for command in commands:
        lines.append(f"printf '%s\\n' {shlex.quote('$ ' + command)}")
        lines.append(command)
    return "\n".join(lines) + "\n"


def _working_dir(step: Step) -> str:
    if step.working_directory:
        return f"{WORKSPACE}/{step.working_directory}"
    return WORKSPACE


def _classify(result: Any, timeout: float) -> tuple[str, str]:
    if result.cancelled:
        return "cancelled", "cancelled on request"
    if result.timed_out:
        return "timed_out", f"timed out after {timeout:g}s"
    if result.oom_killed:
        return "failed", "killed: out of memory (raise executor.resources.memory)"
    if result.exit_code == 0:
        return "succeeded", ""
    return "failed", f"exit code {result.exit_code}"
