"""The scheduler service.

It keeps the state of every unfinished job by folding the job-events stream
from the start, then reacts to what it sees: a submitted run is queued and
dispatched to its pool, and a run cancelled before any executor took it is
finished as cancelled. Every action is an append guarded by the job's last
sequence and a message id, so several schedulers, or one restarted in the
middle of an action, never queue a run twice.
"""

import asyncio
import logging

from nats.aio.client import Client
from nats.js import JetStreamContext

from libs.config import Config
from libs.events import (
    DispatchOrder,
    InvalidTransition,
    JobQueued,
    JobState,
    RunFinished,
    StreamConflict,
    apply,
    encode,
    subjects,
)
from libs.events.journal import StoredEvent, append, follow
from libs.events.streams import dispatch_consumer_config, ensure_consumer
from services.runtime import ServiceState, connect_jetstream

log = logging.getLogger(__name__)


class Scheduler:
    """Queues and dispatches runs; see the module docstring."""

    def __init__(self, config: Config, nats_url: str | None = None) -> None:
        self.config = config
        self.state = ServiceState.CREATED
        self._nats_url = nats_url
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._task: asyncio.Task[None] | None = None
        self._jobs: dict[str, JobState] = {}
        self._job_seq: dict[str, int] = {}
        self._pools: set[str] = set()

    async def start(self) -> None:
        """Connect, replay the job events and start reacting to new ones."""
        self.state = ServiceState.STARTING
        self._nc, self._js = await connect_jetstream(
            self.config, "stasis-scheduler", self._nats_url
        )
        self._task = asyncio.create_task(self._run(), name="scheduler")
        self.state = ServiceState.RUNNING
        log.info("scheduler started")

    async def stop(self) -> None:
        """Stop reacting and close the NATS connection."""
        self.state = ServiceState.STOPPING
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._nc is not None:
            await self._nc.close()
        self.state = ServiceState.STOPPED
        log.info("scheduler stopped")

    async def _run(self) -> None:
        assert self._js is not None
        js = self._js
        head = await _stream_last_seq(js)
        caught_up = head == 0
        if caught_up:
            log.info("scheduler replayed 0 events")
        async for stored in follow(js):
            self._fold(stored)
            if caught_up:
                await self._react(stored.event.job_id)
            elif stored.seq >= head:
                caught_up = True
                log.info("scheduler replayed %d events", head)
                for job_id, state in list(self._jobs.items()):
                    if not state.last_run.finished:
                        await self._react(job_id, recovering=True)

    def _fold(self, stored: StoredEvent) -> None:
        job_id = stored.event.job_id
        try:
            state = apply(self._jobs.get(job_id), stored.event)
        except InvalidTransition as exc:
            log.warning("ignoring event at seq %d: %s", stored.seq, exc)
            return
        # Finished jobs stay: a retry appends a new run to them.
        self._job_seq[job_id] = stored.seq
        self._jobs[job_id] = state

    async def _react(self, job_id: str, recovering: bool = False) -> None:
        state = self._jobs.get(job_id)
        if state is None:
            return
        run = state.last_run
        try:
            if run.cancel_requested and run.status in ("submitted", "queued"):
                await self._finish_cancelled(state)
            elif run.status == "submitted":
                await self._queue(state)
            elif run.status == "queued" and recovering:
                # The dispatch order may have been lost between the append of
                # job.queued and its publish; executors ignore a duplicate.
                await self._dispatch(state)
        except StreamConflict as exc:
            log.info(
                "job %s changed while scheduling, will react again: %s", job_id, exc
            )

    async def _queue(self, state: JobState) -> None:
        assert self._js is not None
        run = state.last_run
        await append(
            self._js,
            JobQueued(job_id=state.job_id, run_id=run.run_id, pool=state.pool),
            msg_id=f"{run.run_id}:queued",
            expected_last_seq=self._job_seq[state.job_id],
        )
        await self._dispatch(state)
        log.info(
            "queued run %s of job %s in pool %s", run.run_id, state.job_id, state.pool
        )

    async def _dispatch(self, state: JobState) -> None:
        assert self._js is not None
        if state.pool not in self._pools:
            await ensure_consumer(
                self._js,
                subjects.DISPATCH_STREAM,
                dispatch_consumer_config(state.pool, float(self.config.nats.ack_wait)),
            )
            self._pools.add(state.pool)
        order = DispatchOrder(
            job_id=state.job_id, run_id=state.last_run.run_id, pool=state.pool
        )
        await self._js.publish(
            subjects.dispatch_subject(state.pool),
            encode(order),
            stream=subjects.DISPATCH_STREAM,
            headers={"Nats-Msg-Id": f"{order.run_id}:dispatch"},
        )

    async def _finish_cancelled(self, state: JobState) -> None:
        assert self._js is not None
        run = state.last_run
        await append(
            self._js,
            RunFinished(
                job_id=state.job_id,
                run_id=run.run_id,
                outcome="cancelled",
                reason="cancelled before an executor started it",
            ),
            msg_id=f"{run.run_id}:finished",
            expected_last_seq=self._job_seq[state.job_id],
        )
        log.info("cancelled queued run %s of job %s", run.run_id, state.job_id)


async def _stream_last_seq(js: JetStreamContext) -> int:
    info = await js.stream_info(subjects.JOBS_STREAM)
    return info.state.last_seq
