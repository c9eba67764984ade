"""The pure fold that rebuilds a job's state from its events.

Every process that needs a job's state (gateway projection, scheduler,
executor, audit) calls the same `apply`, so that they can never disagree about
what a stream means. `apply` raises `InvalidTransition` for an event that the
state does not allow, for example a run that starts after it has finished.
"""

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

import msgspec

from .errors import InvalidTransition
from .types import (
    AnyEvent,
    ArtifactRemoved,
    ArtifactStored,
    ArtifactWarning,
    AttemptLost,
    CancelRequested,
    JobQueued,
    JobSubmitted,
    PipelineLoaded,
    Repository,
    RunDispatched,
    RunFinished,
    RunHeld,
    RunRequested,
    RunStarted,
    SourceCheckedOut,
    StepFinished,
    StepStarted,
)

RunStatus = Literal[
    "submitted",
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "skipped",
    "expired",
]
StepStatus = Literal[
    "pending", "running", "succeeded", "failed", "cancelled", "timed_out", "skipped"
]

TERMINAL: frozenset[str] = frozenset(
    {"succeeded", "failed", "cancelled", "timed_out", "skipped", "expired"}
)
_RANK = {"submitted": 0, "queued": 1, "running": 2}


class StepState(msgspec.Struct, frozen=True, kw_only=True):
    """The state of one step in one run."""

    name: str
    type: str
    status: StepStatus = "pending"
    attempt: int = 0
    exit_code: int | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float = 0.0
    reason: str = ""


class ArtifactRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A stored artifact of a run, as the API lists it."""

    step: str
    name: str
    key: str
    size: int
    sha256: str
    format: str
    storage_url: str
    content_type: str
    stored_at: datetime


class RunState(msgspec.Struct, frozen=True, kw_only=True):
    """The state of one run of a job."""

    run_id: str
    number: int
    status: RunStatus = "submitted"
    submitted_at: datetime
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    executor_id: str | None = None
    attempt: int = 0
    commit: str | None = None
    image: str | None = None
    steps: tuple[StepState, ...] = ()
    artifacts: tuple[ArtifactRecord, ...] = ()
    warnings: tuple[str, ...] = ()
    cancel_requested: bool = False
    lost_attempts: int = 0
    reason: str = ""
    duration_s: float = 0.0
    last_log_seq: int = 0
    queue_position: int | None = None
    """Place in the pool's queue from 1 while the scheduler holds the run."""
    queue_reason: str = ""
    """Why the scheduler holds the run; kept after it ends without starting."""
    dispatched_at: datetime | None = None

    @property
    def finished(self) -> bool:
        """Whether the run has reached a final outcome."""
        return self.status in TERMINAL


class JobState(msgspec.Struct, frozen=True, kw_only=True):
    """The state of one job: its submission and each of its runs."""

    job_id: str
    repository: Repository
    env: dict[str, str]
    trigger: str
    pool: str
    submitted_at: datetime
    submitted_by: str | None
    runs: tuple[RunState, ...]
    priority: int = 0
    concurrency_group: str | None = None
    cancel_in_progress: bool = False
    labels: tuple[str, ...] = ()
    secret_names: tuple[str, ...] = ()
    credentials_kind: str | None = None
    replay_of: str | None = None
    image: str | None = None
    only_steps: tuple[str, ...] | None = None

    @property
    def last_run(self) -> RunState:
        """The most recent run, whose status is the job's status."""
        return self.runs[-1]

    @property
    def status(self) -> RunStatus:
        """The status of the most recent run."""
        return self.runs[-1].status

    def run(self, run_id: str) -> RunState | None:
        """Return the run named `run_id`, or None."""
        for run in self.runs:
            if run.run_id == run_id:
                return run
        return None


def fold(events: Iterable[AnyEvent]) -> JobState | None:
    """Rebuild a job's state from its events, oldest first."""
    state: JobState | None = None
    for event in events:
        state = apply(state, event)
    return state


def apply(state: JobState | None, event: AnyEvent) -> JobState:
    """Return the state after `event`; raise InvalidTransition if it cannot follow."""
    if isinstance(event, JobSubmitted):
        if state is not None:
            raise InvalidTransition(f"job {event.job_id} was already submitted")
        return _submitted(event)

    if state is None:
        raise InvalidTransition(
            f"{type(event).__name__} for job {event.job_id} before job.submitted"
        )
    if event.job_id != state.job_id:
        raise InvalidTransition(
            f"event for job {event.job_id} applied to job {state.job_id}"
        )
    if isinstance(event, RunRequested):
        return _run_requested(state, event)
    run = state.run(event.run_id)
    if run is None:
        raise InvalidTransition(f"job {state.job_id} has no run {event.run_id}")

    new_run = _apply_to_run(run, event)
    runs = tuple(new_run if r.run_id == run.run_id else r for r in state.runs)
    return msgspec.structs.replace(state, runs=runs)


def _submitted(event: JobSubmitted) -> JobState:
    run = RunState(run_id=event.run_id, number=1, submitted_at=event.at)
    return JobState(
        job_id=event.job_id,
        repository=event.repository,
        env=event.env,
        trigger=event.trigger,
        pool=event.pool,
        submitted_at=event.at,
        submitted_by=event.submitted_by,
        runs=(run,),
        priority=event.priority,
        concurrency_group=event.concurrency_group,
        cancel_in_progress=event.cancel_in_progress,
        labels=tuple(event.labels),
        secret_names=tuple(event.secret_names),
        credentials_kind=event.credentials_kind,
        replay_of=event.replay_of,
        image=event.image,
        only_steps=None if event.only_steps is None else tuple(event.only_steps),
    )


RETRYABLE: frozenset[str] = frozenset({"failed", "timed_out", "cancelled", "expired"})
"""Outcomes after which a job may get another run."""


def _run_requested(state: JobState, event: RunRequested) -> JobState:
    last = state.last_run
    if last.status not in RETRYABLE:
        raise InvalidTransition(
            f"job {state.job_id} cannot get a new run while its last run "
            f"{last.run_id} is {last.status!r}"
        )
    if state.run(event.run_id) is not None:
        raise InvalidTransition(f"job {state.job_id} already has run {event.run_id}")
    run = RunState(
        run_id=event.run_id, number=len(state.runs) + 1, submitted_at=event.at
    )
    return msgspec.structs.replace(state, runs=(*state.runs, run))


def _apply_to_run(run: RunState, event: AnyEvent) -> RunState:
    replace = msgspec.structs.replace
    match event:
        case CancelRequested():
            if run.finished:
                return run
            return replace(run, cancel_requested=True)
        case JobQueued():
            _require_status(run, event, {"submitted"})
            return replace(
                run,
                status="queued",
                queued_at=event.at,
                queue_position=event.position,
                queue_reason=event.reason,
            )
        case RunHeld():
            _require_status(run, event, {"queued"})
            return replace(
                run, queue_position=event.position, queue_reason=event.reason
            )
        case RunDispatched():
            _require_status(run, event, {"queued"})
            return replace(
                run, dispatched_at=event.at, queue_position=None, queue_reason=""
            )
        case RunStarted():
            if run.status == "running" and event.attempt > run.attempt:
                return replace(
                    run, attempt=event.attempt, executor_id=event.executor_id
                )
            _require_status(run, event, {"queued"})
            return replace(
                run,
                status="running",
                started_at=event.at,
                executor_id=event.executor_id,
                attempt=event.attempt,
                queue_position=None,
                queue_reason="",
            )
        case AttemptLost():
            _require_status(run, event, {"running"})
            if event.attempt != run.attempt:
                raise InvalidTransition(
                    f"attempt {event.attempt} of run {run.run_id} lost, but the "
                    f"current attempt is {run.attempt}"
                )
            return replace(run, lost_attempts=run.lost_attempts + 1)
        case SourceCheckedOut():
            _require_status(run, event, {"running"})
            return replace(run, commit=event.commit)
        case PipelineLoaded():
            _require_status(run, event, {"running"})
            steps = tuple(StepState(name=s.name, type=s.type) for s in event.steps)
            return replace(run, image=event.image, steps=steps)
        case StepStarted() | StepFinished():
            _require_status(run, event, {"running"})
            return replace(run, steps=_apply_to_steps(run, event))
        case ArtifactStored():
            # Allowed after the run too: users may upload artifacts to any run.
            record = ArtifactRecord(
                step=event.step,
                name=event.name,
                key=event.key,
                size=event.size,
                sha256=event.sha256,
                format=event.format,
                storage_url=event.storage_url,
                content_type=event.content_type,
                stored_at=event.at,
            )
            return replace(run, artifacts=(*run.artifacts, record))
        case ArtifactRemoved():
            kept = tuple(a for a in run.artifacts if a.key != event.key)
            return replace(run, artifacts=kept)
        case ArtifactWarning():
            return replace(run, warnings=(*run.warnings, event.message))
        case RunFinished():
            if run.finished:
                raise InvalidTransition(
                    f"run {run.run_id} finished twice ({run.status}, then "
                    f"{event.outcome})"
                )
            return replace(
                run,
                status=event.outcome,
                finished_at=event.at,
                reason=event.reason,
                duration_s=event.duration_s,
                last_log_seq=event.last_log_seq,
            )
    raise InvalidTransition(f"unknown event type {type(event).__name__}")


def _require_status(run: RunState, event: AnyEvent, allowed: set[str]) -> None:
    if run.status not in allowed:
        backwards = _RANK.get(run.status, 3) > min(_RANK.get(s, 3) for s in allowed)
        kind = "goes backwards from" if backwards else "cannot follow"
        raise InvalidTransition(
            f"{type(event).__name__} {kind} status {run.status!r} of run {run.run_id}"
        )


def _apply_to_steps(
    run: RunState, event: StepStarted | StepFinished
) -> tuple[StepState, ...]:
    steps = list(run.steps)
    for index, step in enumerate(steps):
        if step.name == event.step:
            steps[index] = _apply_to_step(step, event)
            return tuple(steps)
    raise InvalidTransition(f"run {run.run_id} has no step {event.step!r}")


def _apply_to_step(step: StepState, event: StepStarted | StepFinished) -> StepState:
    replace = msgspec.structs.replace
    if isinstance(event, StepStarted):
        if event.attempt <= step.attempt:
            raise InvalidTransition(
                f"step {step.name!r} attempt {event.attempt} started after attempt "
                f"{step.attempt}"
            )
        return replace(
            step,
            status="running",
            attempt=event.attempt,
            started_at=event.at,
            finished_at=None,
            exit_code=None,
        )

    if event.outcome == "skipped":
        if step.status != "pending":
            raise InvalidTransition(f"step {step.name!r} skipped while {step.status!r}")
    elif step.status != "running" or event.attempt != step.attempt:
        raise InvalidTransition(
            f"step {step.name!r} attempt {event.attempt} finished while "
            f"{step.status!r} at attempt {step.attempt}"
        )
    return replace(
        step,
        status=event.outcome,
        exit_code=event.exit_code,
        finished_at=event.at,
        duration_s=event.duration_s,
        reason=event.reason,
    )
