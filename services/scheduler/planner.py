"""The scheduling decision: a pure function from the jobs and executors to a plan.

`plan` orders every waiting run by effective priority, then by the stream
sequence of the event that created the run (FIFO), and walks that order once.
A run is dispatched when no rule holds it back; otherwise it is held with the
first rule that does, and later runs may still pass it. The service turns the
plan into events, so a scheduler restarted at the same moment plans the same.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from libs.events import JobState
from services.executor.heartbeat import ExecutorHeartbeat

from .capacity import PoolCapacity, pool_capacities
from .rules import SchedulingRules, repository_key


@dataclass(frozen=True)
class Decision:
    """What happens to one waiting run in this pass."""

    job_id: str
    run_id: str
    dispatch: bool
    effective_priority: int
    position: int | None = None
    """Place in the pool's queue among held runs, from 1; None when dispatched."""
    reason: str = ""


@dataclass(frozen=True)
class CancelInProgress:
    """A run to cancel because a newer run of its group asked for that."""

    job_id: str
    run_id: str
    reason: str


@dataclass
class Plan:
    """Everything one pass decided, in the order the events are appended."""

    finish_cancelled: list[str] = field(default_factory=list)
    """Jobs whose run was cancelled before an executor started it."""
    cancel_in_progress: list[CancelInProgress] = field(default_factory=list)
    expire: list[tuple[str, str]] = field(default_factory=list)
    """(job id, reason) of runs that waited longer than the maximum queue time."""
    decisions: list[Decision] = field(default_factory=list)


@dataclass
class _Counters:
    """Runs dispatched or running, by what the limits count them under."""

    total: int = 0
    repository: dict[str, int] = field(default_factory=dict)
    key: dict[str, int] = field(default_factory=dict)
    group: dict[str, JobState] = field(default_factory=dict)

    def add(self, job: JobState) -> None:
        self.total += 1
        repo = repository_key(job.repository.url)
        self.repository[repo] = self.repository.get(repo, 0) + 1
        key = _key_of(job)
        self.key[key] = self.key.get(key, 0) + 1
        if job.concurrency_group is not None:
            self.group.setdefault(job.concurrency_group, job)


def plan(
    jobs: Mapping[str, JobState],
    origin_seq: Mapping[str, int],
    heartbeats: Iterable[ExecutorHeartbeat],
    now: datetime,
    rules: SchedulingRules,
) -> Plan:
    """Decide what to dispatch, hold, expire and cancel at time `now`.

    `origin_seq` maps a run id to the stream sequence of the `job.submitted`
    or `run.requested` event that created it. `heartbeats` are the live
    executors only.
    """
    result = Plan()
    counters = _Counters()
    waiting: list[JobState] = []
    for job in jobs.values():
        run = job.last_run
        if _is_active(job):
            counters.add(job)
        if run.status not in ("submitted", "queued"):
            continue
        if run.cancel_requested:
            result.finish_cancelled.append(job.job_id)
        elif run.status == "submitted" or run.dispatched_at is None:
            waiting.append(job)

    result.cancel_in_progress = _cancels_in_progress(jobs, origin_seq)
    cancelled = {c.job_id for c in result.cancel_in_progress}
    queue: list[tuple[int, int, JobState]] = []
    for job in waiting:
        if job.job_id in cancelled:
            continue
        run = job.last_run
        queued_at = run.queued_at or now
        if (now - queued_at).total_seconds() >= rules.max_queue_time:
            result.expire.append((job.job_id, _expiry_reason(job, now, rules)))
            continue
        effective = rules.effective_priority(job.priority, queued_at, now)
        queue.append((-effective, origin_seq.get(run.run_id, 0), job))
    queue.sort(key=lambda item: (item[0], item[1]))

    capacities = pool_capacities(heartbeats, jobs)
    positions: dict[str, int] = {}
    seen_groups: dict[str, JobState] = {}
    for negative, _, job in queue:
        reason = _held_reason(job, counters, seen_groups, rules)
        capacity = capacities.get(job.pool) or PoolCapacity(job.pool)
        if reason is None and capacity.place(job.labels) is None:
            reason = capacity.why_not(job.labels)
        if job.concurrency_group is not None:
            seen_groups.setdefault(job.concurrency_group, job)
        run_id = job.last_run.run_id
        if reason is None:
            counters.add(job)
            result.decisions.append(Decision(job.job_id, run_id, True, -negative))
            continue
        positions[job.pool] = positions.get(job.pool, 0) + 1
        result.decisions.append(
            Decision(job.job_id, run_id, False, -negative, positions[job.pool], reason)
        )
    return result


def _is_active(job: JobState) -> bool:
    run = job.last_run
    return run.status == "running" or (
        run.status == "queued" and run.dispatched_at is not None
    )


def _key_of(job: JobState) -> str:
    return job.submitted_by if job.submitted_by is not None else ""


def _held_reason(
    job: JobState,
    counters: _Counters,
    seen_groups: Mapping[str, JobState],
    rules: SchedulingRules,
) -> str | None:
    group = job.concurrency_group
    if group is not None and group in counters.group:
        other = counters.group[group]
        return (
            f"concurrency group {group!r} has run {other.last_run.run_id} of job "
            f"{other.job_id} in progress"
        )
    if group is not None and group in seen_groups:
        other = seen_groups[group]
        return (
            f"concurrency group {group!r} runs job {other.job_id} first, which is "
            "ahead in the queue"
        )
    limit = rules.max_running
    if limit is not None and counters.total >= limit:
        return f"the global limit of {limit} running runs is reached"
    limit = rules.max_running_per_repository
    repo = repository_key(job.repository.url)
    if limit is not None and counters.repository.get(repo, 0) >= limit:
        return f"the limit of {limit} running runs per repository is reached for {repo}"
    limit = rules.max_running_per_key
    key = _key_of(job)
    if limit is not None and counters.key.get(key, 0) >= limit:
        who = f"API key {key!r}" if key else "anonymous submissions"
        return f"the limit of {limit} running runs per API key is reached for {who}"
    return None


def _cancels_in_progress(
    jobs: Mapping[str, JobState], origin_seq: Mapping[str, int]
) -> list[CancelInProgress]:
    """Return older unfinished runs of groups whose newest run cancels them."""
    newest: dict[str, JobState] = {}
    members: dict[str, list[JobState]] = {}
    for job in jobs.values():
        run = job.last_run
        group = job.concurrency_group
        if group is None or run.finished or run.cancel_requested:
            continue
        members.setdefault(group, []).append(job)
        if not job.cancel_in_progress:
            continue
        current = newest.get(group)
        if current is None or _seq(job, origin_seq) > _seq(current, origin_seq):
            newest[group] = job
    cancels = []
    for group, canceller in newest.items():
        for job in members[group]:
            if _seq(job, origin_seq) < _seq(canceller, origin_seq):
                cancels.append(
                    CancelInProgress(
                        job.job_id,
                        job.last_run.run_id,
                        f"superseded by run {canceller.last_run.run_id} of job "
                        f"{canceller.job_id} in concurrency group {group!r}, which "
                        "sets cancel_in_progress",
                    )
                )
    return cancels


def _seq(job: JobState, origin_seq: Mapping[str, int]) -> int:
    return origin_seq.get(job.last_run.run_id, 0)


def _expiry_reason(job: JobState, now: datetime, rules: SchedulingRules) -> str:
    run = job.last_run
    assert run.queued_at is not None
    waited = (now - run.queued_at).total_seconds()
    held = f"; it was held because {run.queue_reason}" if run.queue_reason else ""
    return (
        f"waited {waited:.0f}s in the queue without an executor, longer than the "
        f"maximum queue time of {rules.max_queue_time:g}s{held}"
    )
