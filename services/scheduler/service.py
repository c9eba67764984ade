"""The scheduler service: decides which queued run goes to an executor next.

It folds every job from the job-events stream, reads the executors' heartbeats,
and in each pass asks the planner what to dispatch, hold, expire and cancel.
Every decision is an appended event (`job.queued`, `run.held`,
`run.dispatched`, `run.cancel_requested`, `run.finished`), each guarded by the
job's last sequence and a message id, so a restarted scheduler rebuilds the
same queue from the stream and never queues or dispatches a run twice.

Only one scheduler should run: two would each count only their own
dispatches against the limits between two folds.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from prometheus_client import CollectorRegistry

from libs.config import Config
from libs.events import (
    CancelRequested,
    DispatchOrder,
    InvalidTransition,
    JobQueued,
    JobState,
    JobSubmitted,
    RunFinished,
    RunRequested,
    StreamConflict,
    apply,
    encode,
    subjects,
)
from libs.events.journal import StoredEvent, append, follow
from libs.events.streams import dispatch_consumer_config, ensure_consumer
from libs.events.types import RunDispatched, RunHeld
from libs.telemetry.logformat import job_fields
from libs.telemetry.metrics import SchedulerMetrics
from libs.telemetry.service import ServiceTelemetry
from libs.telemetry.tracing import headers_at, inject_trace_context, job_span
from services.executor.heartbeat import (
    ExecutorHeartbeat,
    open_heartbeat_bucket,
    read_heartbeats,
)
from services.runtime import ServiceState, connect_jetstream

from .planner import Decision, Plan, plan
from .rules import SchedulingRules

log = logging.getLogger(__name__)


class Scheduler:
    """Queues, holds and dispatches runs; see the module docstring."""

    def __init__(
        self,
        config: Config,
        nats_url: str | None = None,
        rules: SchedulingRules | None = None,
        tick: float = 1.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.rules = rules or rules_from_config(config)
        self.state = ServiceState.CREATED
        self._nats_url = nats_url
        self._tick = tick
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._jobs: dict[str, JobState] = {}
        self._job_seq: dict[str, int] = {}
        self._origin_seq: dict[str, int] = {}
        """Stream sequence of the event that created each run, for FIFO order."""
        self._seq = 0
        self._written = 0
        self._caught_up = asyncio.Event()
        self._wake = asyncio.Event()
        self._pools: set[str] = set()
        self._beats: dict[str, tuple[int, float, ExecutorHeartbeat]] = {}
        """Executor id to (bucket revision, monotonic time it changed, record)."""
        self.telemetry = ServiceTelemetry(config.telemetry, "scheduler", registry)
        self.metrics = SchedulerMetrics(self.telemetry.registry)

    async def start(self) -> None:
        """Connect, replay the job events and start scheduling."""
        self.state = ServiceState.STARTING
        await self.telemetry.start()
        self._nc, self._js = await connect_jetstream(
            self.config, "stasis-scheduler", self._nats_url
        )
        self._kv = await open_heartbeat_bucket(self._js, self.config.nats.replicas)
        self._tasks = [
            asyncio.create_task(self._follow(), name="scheduler-follow"),
            asyncio.create_task(self._schedule(), name="scheduler-passes"),
        ]
        self.state = ServiceState.RUNNING
        log.info("scheduler started: %s", self.rules)

    async def stop(self) -> None:
        """Stop scheduling and close the NATS connection."""
        self.state = ServiceState.STOPPING
        for task in self._tasks:
            task.cancel()
        pending: set[asyncio.Task[None]] = set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5.0)
        if pending:
            # A cancel can be lost inside a NATS request (asyncio.wait_for in
            # Python 3.11); closing the connection ends such a request.
            log.warning("scheduler tasks ignored cancel for 5s; closing NATS")
        if self._nc is not None:
            await self._nc.close()
        if pending:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=5.0)
        await self.telemetry.stop()
        self.state = ServiceState.STOPPED
        log.info("scheduler stopped")

    async def _follow(self) -> None:
        assert self._js is not None
        info = await self._js.stream_info(subjects.JOBS_STREAM)
        head = info.state.last_seq
        if head == 0:
            self._caught_up.set()
        async for stored in follow(self._js):
            self._fold(stored)
            self._seq = stored.seq
            if not self._caught_up.is_set() and stored.seq >= head:
                log.info("scheduler replayed %d events", head)
                self._caught_up.set()
            self._wake.set()

    def _fold(self, stored: StoredEvent) -> None:
        event = stored.event
        try:
            state = apply(self._jobs.get(event.job_id), event)
        except InvalidTransition as exc:
            log.warning("ignoring event at seq %d: %s", stored.seq, exc)
            return
        if isinstance(event, JobSubmitted | RunRequested):
            self._origin_seq[event.run_id] = stored.seq
        # Finished jobs stay: a retry appends a new run to them.
        self._job_seq[event.job_id] = stored.seq
        self._jobs[event.job_id] = state

    async def _schedule(self) -> None:
        await self._caught_up.wait()
        await self._republish_dispatched()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick)
            self._wake.clear()
            # Plan only on a fold that includes this scheduler's own appends,
            # or capacity would not count the runs it just dispatched.
            while self._seq < self._written:
                await self._wake.wait()
                self._wake.clear()
            try:
                await self._refresh_executors()
                await self._pass()
            except Exception:
                log.exception(
                    "scheduling pass failed; trying again in %.1fs", self._tick
                )
                await asyncio.sleep(self._tick)

    async def _refresh_executors(self) -> None:
        assert self._kv is not None
        now = time.monotonic()
        stored = await read_heartbeats(self._kv)
        beats = {}
        for executor_id, (revision, record) in stored.items():
            known = self._beats.get(executor_id)
            seen = known[1] if known is not None and known[0] == revision else now
            beats[executor_id] = (revision, seen, record)
        self._beats = beats

    def _live_executors(self) -> list[ExecutorHeartbeat]:
        cutoff = time.monotonic() - self.rules.executor_ttl
        return [record for _, seen, record in self._beats.values() if seen >= cutoff]

    async def _pass(self) -> None:
        seqs = dict(self._job_seq)
        jobs = dict(self._jobs)
        decided = plan(
            jobs,
            self._origin_seq,
            self._live_executors(),
            datetime.now(UTC),
            self.rules,
        )
        self.metrics.set_queue_depth(jobs.values())
        await self._apply(decided, jobs, seqs)

    async def _apply(
        self, decided: Plan, jobs: dict[str, JobState], seqs: dict[str, int]
    ) -> None:
        for job_id in decided.finish_cancelled:
            await self._guarded(self._finish_cancelled(jobs[job_id], seqs))
        for cancel in decided.cancel_in_progress:
            event = CancelRequested(
                job_id=cancel.job_id,
                run_id=cancel.run_id,
                requested_by="scheduler",
                reason=cancel.reason,
            )
            await self._guarded(
                self._append(event, f"{cancel.run_id}:cancel-in-progress", seqs)
            )
            log.info("cancel requested for run %s: %s", cancel.run_id, cancel.reason)
        for job_id, reason in decided.expire:
            await self._guarded(self._expire(jobs[job_id], reason, seqs))
        for decision in decided.decisions:
            await self._guarded(self._decide(jobs[decision.job_id], decision, seqs))

    async def _guarded(self, action: Awaitable[object]) -> None:
        try:
            await action
        except StreamConflict as exc:
            # The job changed since the plan; the next pass sees the change.
            log.info("job changed while scheduling, planning again: %s", exc)

    async def _append(
        self,
        event: JobQueued | RunHeld | RunDispatched | CancelRequested | RunFinished,
        msg_id: str,
        seqs: dict[str, int],
    ) -> int:
        assert self._js is not None
        seq = await append(
            self._js, event, msg_id=msg_id, expected_last_seq=seqs[event.job_id]
        )
        seqs[event.job_id] = seq
        self._written = max(self._written, seq)
        return seq

    async def _decide(
        self, job: JobState, decision: Decision, seqs: dict[str, int]
    ) -> None:
        run = job.last_run
        if run.status == "submitted":
            queued = JobQueued(
                job_id=job.job_id,
                run_id=run.run_id,
                pool=job.pool,
                reason=decision.reason,
                position=decision.position,
            )
            await self._append(queued, f"{run.run_id}:queued", seqs)
            log.info(
                "queued run %s of job %s in pool %s%s",
                run.run_id,
                job.job_id,
                job.pool,
                f" at position {decision.position}: {decision.reason}"
                if not decision.dispatch
                else "",
                extra=job_fields(job.job_id, run.run_id),
            )
        elif not decision.dispatch and _worth_recording(
            run.queue_position, run.queue_reason, decision, self.rules.exact_positions
        ):
            held = RunHeld(
                job_id=job.job_id,
                run_id=run.run_id,
                position=decision.position,
                reason=decision.reason,
            )
            await self._append(held, f"{run.run_id}:held:{seqs[job.job_id]}", seqs)
            log.debug(
                "run %s held at %s: %s", run.run_id, decision.position, decision.reason
            )
        if decision.dispatch:
            await self._dispatch(job, decision, seqs)

    async def _dispatch(
        self, job: JobState, decision: Decision, seqs: dict[str, int]
    ) -> None:
        run_id = job.last_run.run_id
        dispatched = RunDispatched(
            job_id=job.job_id,
            run_id=run_id,
            pool=job.pool,
            labels=list(job.labels),
            effective_priority=decision.effective_priority,
        )
        assert self._js is not None
        submitted_at = job.last_run.submitted_at
        origin = await headers_at(
            self._js, subjects.JOBS_STREAM, self._origin_seq.get(run_id, 0)
        )
        with job_span(
            "scheduler queue",
            job.job_id,
            run_id,
            parent_headers=origin,
            start_time=submitted_at,
            effective_priority=decision.effective_priority,
        ):
            await self._append(dispatched, f"{run_id}:dispatched", seqs)
            await self._publish_order(job)
        waited = (datetime.now(UTC) - submitted_at).total_seconds()
        self.metrics.queue_wait.observe(max(0.0, waited))
        self.metrics.dispatched.inc()
        log.info(
            "dispatched run %s of job %s to pool %s (effective priority %d)",
            run_id,
            job.job_id,
            job.pool,
            decision.effective_priority,
            extra=job_fields(job.job_id, run_id),
        )

    async def _publish_order(self, job: JobState) -> None:
        assert self._js is not None
        if job.pool not in self._pools:
            await ensure_consumer(
                self._js,
                subjects.DISPATCH_STREAM,
                dispatch_consumer_config(job.pool, float(self.config.nats.ack_wait)),
            )
            self._pools.add(job.pool)
        order = DispatchOrder(
            job_id=job.job_id,
            run_id=job.last_run.run_id,
            pool=job.pool,
            labels=list(job.labels),
        )
        await self._js.publish(
            subjects.dispatch_subject(job.pool),
            encode(order),
            stream=subjects.DISPATCH_STREAM,
            headers=inject_trace_context({"Nats-Msg-Id": f"{order.run_id}:dispatch"}),
        )

    async def _republish_dispatched(self) -> None:
        # An order may have been lost between the append of run.dispatched and
        # its publish; executors ignore a duplicate of a started run.
        for job in list(self._jobs.values()):
            run = job.last_run
            if run.status == "queued" and run.dispatched_at is not None:
                await self._publish_order(job)
                log.info("published the order of dispatched run %s again", run.run_id)

    async def _expire(self, job: JobState, reason: str, seqs: dict[str, int]) -> None:
        run = job.last_run
        finished = RunFinished(
            job_id=job.job_id, run_id=run.run_id, outcome="expired", reason=reason
        )
        await self._append(finished, f"{run.run_id}:finished", seqs)
        self.metrics.runs_finished.labels("expired").inc()
        log.info(
            "run %s of job %s expired: %s",
            run.run_id,
            job.job_id,
            reason,
            extra=job_fields(job.job_id, run.run_id),
        )

    async def _finish_cancelled(self, job: JobState, seqs: dict[str, int]) -> None:
        run = job.last_run
        finished = RunFinished(
            job_id=job.job_id,
            run_id=run.run_id,
            outcome="cancelled",
            reason="cancelled before an executor started it",
        )
        await self._append(finished, f"{run.run_id}:finished", seqs)
        self.metrics.runs_finished.labels("cancelled").inc()
        log.info(
            "cancelled queued run %s of job %s",
            run.run_id,
            job.job_id,
            extra=job_fields(job.job_id, run.run_id),
        )


def _worth_recording(
    position: int | None, reason: str, decision: Decision, exact_positions: int
) -> bool:
    """Return whether a held run's new position or reason deserves a `run.held`."""
    if reason != decision.reason:
        return True
    if position == decision.position:
        return False
    if position is None or decision.position is None:
        return True
    if decision.position <= exact_positions:
        return True
    return abs(decision.position - position) * 10 >= position


def rules_from_config(config: Config) -> SchedulingRules:
    """Return the scheduling rules that the `scheduler` section sets."""
    settings = config.scheduler
    return SchedulingRules(
        max_running=settings.max_running,
        max_running_per_repository=settings.max_running_per_repository,
        max_running_per_key=settings.max_running_per_key,
        max_queue_time=float(settings.max_queue_time),
        ageing_interval=float(settings.ageing_interval),
        executor_ttl=float(settings.executor_ttl),
    )
