"""Running one attempt of one run: clone, load the pipeline, run its steps.

The runner applies the rules of the pipeline language (trigger, step order,
`when`, `if`, retries, `continue_on_error`, timeouts, environment, shell). It
owns every resource it makes (clone directory, volume, step containers) and
removes all of them before it returns, whatever the outcome. It appends the
step events itself; the run's start and finish belong to the executor service,
which guards them against a second executor.
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

import msgspec

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
from libs.secrets import JobSecrets
from libs.telemetry.metrics import ExecutorMetrics
from libs.telemetry.tracing import job_span

from .artifacts import ArtifactCollector
from .credentials import Credentials
from .docker_runner import (
    LABEL_JOB,
    LABEL_RUN,
    LABEL_STEP,
    WORKSPACE,
    ContainerResult,
    ContainerSpec,
    ContainerStartFailed,
    DockerRunner,
    ImageUnavailable,
    StopRequest,
)
from .logs import LogBudget, StepLog
from .masking import SecretMasker
from .workspace import (
    PIPELINE_FILE,
    Checkout,
    CloneError,
    clone,
    make_workdir,
    pack,
    remove_workdir,
)

log = logging.getLogger(__name__)

Emit = Callable[[AnyEvent, str], Awaitable[None]]

# How many kill grace periods an `always` step may take when it runs after a
# cancel or after the job's time limit ran out, so that clean-up stays bounded.
CLEANUP_GRACE_PERIODS = 3


_SHELLS_FOUND: dict[tuple[str, str, str], bool] = {}
"""Whether a shell is in an image's PATH, by (image id, shell, PATH). Image ids
are content hashes, so an entry never goes stale."""
_SHELLS_FOUND_MAX = 1024


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
    step_outcomes: dict[str, str] = field(default_factory=dict)
    missing_shell: bool = False


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
        secrets: JobSecrets | None = None,
        metrics: ExecutorMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.secrets = secrets or JobSecrets()
        self.credentials = (
            msgspec.convert(self.secrets.credentials, Credentials)
            if self.secrets.credentials
            else None
        )
        secret_values = self.secrets.values()
        if self.credentials is not None:
            secret_values += self.credentials.secret_values()
        self.masker = SecretMasker(secret_values) if secret_values else None
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
        # One budget for the whole run, so that many steps cannot each log the maximum.
        self.log_budget = LogBudget.for_executor(config.executor)
        self._archive = Path()
        self.artifacts = ArtifactCollector(
            config, docker.docker, emit, job.job_id, run_id, attempt
        )

    async def run(self) -> RunResult:
        """Run the whole attempt and return its outcome."""
        system = StepLog(
            self.js,
            self.job.job_id,
            self.run_id,
            SYSTEM_STEP,
            self.attempt,
            masker=self.masker,
            budget=self.log_budget,
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
            if self.metrics is not None:
                self.metrics.log_bytes.inc(system.bytes_written)
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
        with job_span("clone", self.job.job_id, self.run_id, attempt=self.attempt):
            checkout = await self._checkout(system, workdir)
        if isinstance(checkout, RunResult):
            return checkout
        pipeline = await self._load(system, checkout)
        if isinstance(pipeline, RunResult):
            return pipeline
        pipeline = self._apply_replay_overrides(pipeline)
        if isinstance(pipeline, RunResult):
            await system.note(pipeline.reason)
            return pipeline

        skipped = self._trigger_result(pipeline)
        if skipped is not None:
            await system.note(skipped.reason)
            return skipped

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
        output: list[str] = []
        try:
            await self.docker.ensure_image(pipeline.image, output)
        except ImageUnavailable as exc:
            await system.note(str(exc))
            return RunResult("failed", str(exc))
        for line in output:
            await system.note(line)
        return pipeline

    def _apply_replay_overrides(self, pipeline: Pipeline) -> Pipeline | RunResult:
        """Use a replay's image, and check that the steps it selects exist."""
        if self.job.image:
            pipeline = msgspec.structs.replace(pipeline, image=self.job.image)
        selected = self.job.only_steps
        if selected is None:
            return pipeline
        names = [step.name for step in pipeline.steps]
        unknown = sorted(set(selected) - set(names))
        if unknown:
            return RunResult(
                "failed",
                f"the replay selects steps {unknown} that {PIPELINE_FILE} does not "
                f"have; its steps are {names}",
            )
        return pipeline

    async def _checkout(self, system: StepLog, workdir: Path) -> Checkout | RunResult:
        repository = self.job.repository
        output: list[str] = []
        await system.note(f"cloning {repository.url}")
        cloning = asyncio.create_task(
            clone(
                repository,
                workdir / "src",
                float(self.config.executor.timeouts.clone),
                output,
                credentials=self.credentials,
                depth=repository.depth,
                submodules=repository.submodules,
                lfs=repository.lfs,
            )
        )
        stopping = asyncio.create_task(self.stop.requested.wait())
        await asyncio.wait({cloning, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not cloning.done():
            # A cancel or an executor shutdown must not wait for a slow clone.
            cloning.cancel()
            await asyncio.gather(cloning, return_exceptions=True)
            return RunResult("cancelled", "cancelled during the clone")
        try:
            checkout = cloning.result()
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
        return checkout

    async def _load(self, system: StepLog, checkout: Checkout) -> Pipeline | RunResult:
        pipeline_path = checkout.path / PIPELINE_FILE
        try:
            text = await asyncio.to_thread(pipeline_path.read_text, encoding="utf-8")
        except FileNotFoundError:
            reason = (
                f"{self.job.repository.url} has no {PIPELINE_FILE} at commit "
                f"{checkout.commit[:12]}; add one at the repository root"
            )
            await system.note(reason)
            return RunResult("failed", reason)
        except (OSError, UnicodeDecodeError) as exc:
            return RunResult("failed", f"cannot read {PIPELINE_FILE}: {exc}")
        try:
            return load_pipeline(text, source=PIPELINE_FILE)
        except PipelineError as exc:
            await system.note(str(exc))
            return RunResult("failed", f"invalid pipeline: {exc}")

    def _trigger_result(self, pipeline: Pipeline) -> RunResult | None:
        """Return the run's result when `on:` rejects the submission, else None.

        An "api" submission counts as "manual". For "push" and "tag" the ref
        is `repository.branch`: the pushed branch, or the tag's name.
        """
        trigger = self.job.trigger
        ref = self.job.repository.branch
        if trigger in ("manual", "api"):
            runs, reason = pipeline.match_trigger("manual")
        elif trigger in ("push", "tag"):
            if not ref:
                noun = "branch that was pushed" if trigger == "push" else "tag's name"
                return RunResult(
                    "failed",
                    f"a {trigger!r} submission needs repository.branch set to the "
                    f"{noun}; submit it again with the ref",
                )
            runs, reason = pipeline.match_trigger(
                trigger, branch=ref if trigger == "push" else None, tag=ref
            )
        else:
            return RunResult(
                "failed",
                f"invalid trigger {trigger!r}: use 'manual', 'api', 'push' or 'tag'",
            )
        if runs:
            return None
        return RunResult(
            "skipped",
            f"{PIPELINE_FILE} does not run this {trigger} submission: {reason}",
        )

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
        if self.artifacts.too_large:
            return RunResult("failed", self.artifacts.too_large)
        return RunResult("succeeded")

    def _skip_reason(self, step: Step, env: dict[str, str]) -> str:
        progress = self._progress
        cancelled = self.stop.requested.is_set()
        failing = progress.failed or progress.timed_out
        if step.when == "on_success" and cancelled:
            return "the run was cancelled (when: on_success)"
        if step.when == "on_success" and failing:
            return f"{progress.reason} (when: on_success)"
        if step.when == "on_failure" and cancelled:
            return "the run was cancelled, which is not a failure (when: on_failure)"
        if step.when == "on_failure" and not failing:
            return "no earlier step failed or timed out (when: on_failure)"
        if self.job.only_steps is not None and step.name not in self.job.only_steps:
            return "not among the steps the replay selected"
        if step.when == "always" and self.stop.hurry.is_set():
            return "a second cancel request skips clean-up steps (when: always)"
        if step.if_ is not None and not compile_expression(step.if_).evaluate(env):
            return f"if condition {step.if_!r} is false"
        return ""

    async def _run_step(self, pipeline: Pipeline, step: Step, deadline: float) -> None:
        progress = self._progress
        if time.monotonic() >= deadline and not progress.timed_out:
            progress.timed_out = True
            progress.reason = "the job's time limit ran out between steps"
        env = self._step_env(pipeline, step, attempt=1)
        reason = self._skip_reason(step, env)
        if reason:
            progress.step_outcomes[step.name] = "skipped"
            log.info("run %s: step %s skipped: %s", self.run_id, step.name, reason)
            await self._emit_step_finished(
                step.name, "skipped", 0, None, 0.0, reason, 0
            )
            return

        outcome = "failed"
        for attempt in range(1, step.retry.max_attempts + 1):
            if attempt > 1 and not await self._wait_before(step, attempt, deadline):
                break
            with job_span(
                "step",
                self.job.job_id,
                self.run_id,
                step=step.name,
                attempt=attempt,
            ) as span:
                outcome = await self._run_attempt(pipeline, step, attempt, deadline)
                span.set_attribute("stasis.outcome", outcome)
            if not self._should_retry(step, outcome, attempt, deadline):
                break
        self._record(step, outcome)

    def _should_retry(
        self, step: Step, outcome: str, attempt: int, deadline: float
    ) -> bool:
        return (
            outcome in ("failed", "timed_out")
            and attempt < step.retry.max_attempts
            and not self._progress.missing_shell
            and not self.stop.requested.is_set()
            and time.monotonic() < deadline
        )

    async def _wait_before(self, step: Step, attempt: int, deadline: float) -> bool:
        """Wait the retry delay before `attempt`.

        Return False when a cancel or the end of the job's time limit comes first.
        """
        delay = min(step.retry.delay_before(attempt), deadline - time.monotonic())
        if self.stop.requested.is_set():
            return False
        try:
            await asyncio.wait_for(self.stop.requested.wait(), max(0.0, delay))
        except TimeoutError:
            return time.monotonic() < deadline
        return False

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

    def _attempt_timeout(self, step: Step, deadline: float) -> tuple[float, bool]:
        """Return the attempt's time limit in seconds, and whether the job's
        remaining time (rather than the step's limit) set it."""
        step_limit = float(self.config.executor.timeouts.step)
        if step.timeout is not None:
            step_limit = min(step_limit, step.timeout)
        remaining = deadline - time.monotonic()
        if step.when == "always" and (remaining <= 0 or self.stop.requested.is_set()):
            # A clean-up step still runs after a timeout or cancel, for a
            # bounded time.
            grace = float(self.config.executor.timeouts.kill_grace)
            return min(step_limit, grace * CLEANUP_GRACE_PERIODS), False
        timeout = max(0.0, min(step_limit, remaining))
        return timeout, timeout < step_limit

    def _stop_for(self, step: Step) -> StopRequest:
        if step.when != "always":
            return self.stop
        # The first cancel leaves a clean-up step running; a second one, which
        # sets `hurry`, kills it at once.
        return StopRequest(requested=self.stop.hurry, hurry=self.stop.hurry)

    async def _run_attempt(
        self, pipeline: Pipeline, step: Step, attempt: int, deadline: float
    ) -> str:
        env = self._step_env(pipeline, step, attempt)
        container = await self.docker.create_container(
            ContainerSpec(
                image=pipeline.image,
                command=[pipeline.step_shell(step), "-c", build_script(step.scripts)],
                env=env,
                working_dir=_working_dir(step),
                volume=self.volume,
                labels={**self.labels, LABEL_STEP: step.name},
            )
        )
        step_log = StepLog(
            self.js,
            self.job.job_id,
            self.run_id,
            step.name,
            attempt,
            masker=self.masker,
            budget=self.log_budget,
            tail_bytes=int(self.config.executor.log_tail_bytes),
        )
        try:
            await self._upload_source(container)
            missing = await self._missing_shell(container, pipeline, step, env)
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
            if missing:
                await step_log.note(missing)
                outcome, reason, exit_code = "failed", missing, None
            else:
                outcome, reason, exit_code = await self._execute(
                    container, step_log, step, attempt, deadline
                )
        finally:
            last_seq = await step_log.close()
            if self.metrics is not None:
                self.metrics.log_bytes.inc(step_log.bytes_written)
            await container.delete(force=True)

        duration = time.monotonic() - started
        self._progress.last_log_seq = max(self._progress.last_log_seq, last_seq)
        log.info(
            "run %s: step %s attempt %d %s in %.2fs %s",
            self.run_id,
            step.name,
            attempt,
            outcome,
            duration,
            reason,
        )
        await self._emit_step_finished(
            step.name, outcome, attempt, exit_code, duration, reason, last_seq
        )
        return outcome

    async def _execute(
        self,
        container: Any,
        step_log: StepLog,
        step: Step,
        attempt: int,
        deadline: float,
    ) -> tuple[str, str, int | None]:
        """Run a created step container and return its outcome, reason, exit code."""
        timeout, hits_job_deadline = self._attempt_timeout(step, deadline)
        try:
            result = await self.docker.run(
                container, step_log.write, timeout, self._stop_for(step)
            )
        except ContainerStartFailed as exc:
            reason = f"Docker could not start the step's container: {exc}"
            await step_log.note(reason)
            return "failed", reason, None

        outcome, reason = _classify(result, timeout)
        if result.timed_out and hits_job_deadline:
            reason = f"the job's time limit ran out during step {step.name!r}"
            # The job's limit ends the run even for a continue_on_error step.
            self._progress.timed_out = True
            self._progress.reason = self._progress.reason or reason
        last_attempt = not self._should_retry(step, outcome, attempt, deadline)
        if last_attempt and step.artifacts:
            with job_span(
                "artifact upload",
                self.job.job_id,
                self.run_id,
                step=step.name,
                attempt=attempt,
            ):
                await self.artifacts.collect(
                    container, step.name, step.artifacts, step_log
                )
        return outcome, reason, result.exit_code

    async def _upload_source(self, container: Any) -> None:
        # The volume keeps the source for every later container of the run.
        if self._progress.uploaded:
            return
        # aiohttp streams an open file in a thread; the archive can be large.
        with open(self._archive, "rb") as source:  # noqa: ASYNC230
            await container.put_archive(WORKSPACE, source)
        self._progress.uploaded = True

    async def _missing_shell(
        self, container: Any, pipeline: Pipeline, step: Step, env: dict[str, str]
    ) -> str:
        """Return why the step's shell cannot run in the image, or "" when it can.

        Without this check a missing shell only shows as exit code 127 and a
        message of docker-init's.
        """
        shell = pipeline.step_shell(step)
        path = env.get("PATH") or await self.docker.image_path(pipeline.image)
        key = (await self.docker.image_id(pipeline.image), shell, path)
        found = _SHELLS_FOUND.get(key)
        if found is None:
            # The archive request mounts the container's file system, which
            # costs 100 to 300 ms, so each image is asked once per process.
            found = await self.docker.find_executable(container, shell, path)
            if len(_SHELLS_FOUND) >= _SHELLS_FOUND_MAX:
                _SHELLS_FOUND.clear()
            _SHELLS_FOUND[key] = found
        if found:
            return ""
        self._progress.missing_shell = True
        return (
            f"image {pipeline.image!r} has no {shell!r} in its PATH ({path}); set "
            f"`shell: sh` on the step or at the top of {PIPELINE_FILE}, or use an "
            f"image that has {shell}"
        )

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
        # A tag submission names its tag in repository.branch.
        ref = job.repository.branch or ""
        branch, tag = ("", ref) if job.trigger == "tag" else (ref, "")
        predefined = {
            "CI": "true",
            "CI_JOB_ID": job.job_id,
            "CI_RUN_ID": self.run_id,
            "CI_COMMIT_SHA": self.commit,
            "CI_BRANCH": branch,
            "CI_TAG": tag,
            "CI_REPOSITORY_URL": job.repository.url,
            "CI_WORKSPACE": WORKSPACE,
            "CI_STEP_NAME": step.name,
            "CI_STEP_ATTEMPT": str(attempt),
            "CI_TRIGGER": job.trigger,
        }
        # Secret variables act like submitted ones; a name in both is rejected
        # at submission.
        submitted = {**job.env, **self.secrets.variables}
        return pipeline.step_env(step, predefined, submitted)


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


def _classify(result: ContainerResult, timeout: float) -> tuple[str, str]:
    if result.cancelled:
        return "cancelled", "cancelled on request"
    if result.timed_out:
        return "timed_out", f"timed out after {timeout:g}s"
    if result.oom_killed:
        return "failed", "killed: out of memory (raise executor.resources.memory)"
    if result.exit_code == 0:
        return "succeeded", ""
    return "failed", f"exit code {result.exit_code}"
