"""The gateway's in-memory view of every job, rebuilt from the job-events stream.

At start it replays the stream from the first event and then follows it live.
Writers get the stream sequence of their append; a reader that must see that
write calls `wait_for(seq)` first.
"""

import asyncio
import bisect
import logging
from collections.abc import Callable

from nats.js import JetStreamContext

from libs.events import InvalidTransition, JobState, apply, subjects
from libs.events.journal import follow

log = logging.getLogger(__name__)


class Projection:
    """Every job's folded state, kept current by one ordered consumer."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobState] = {}
        self.job_seq: dict[str, int] = {}
        """Stream sequence of each job's last applied event."""
        self.seq = 0
        self.ready = asyncio.Event()
        self._order: list[str] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self, js: JetStreamContext) -> None:
        """Replay the stream up to its current end, then follow it in the background."""
        info = await js.stream_info(subjects.JOBS_STREAM)
        head = info.state.last_seq
        self._task = asyncio.create_task(self._follow(js, head), name="projection")
        ready = asyncio.create_task(self.ready.wait())
        await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            ready.cancel()
            self._task.result()
        log.info("projection replayed %d events into %d jobs", head, len(self.jobs))

    async def stop(self) -> None:
        """Stop following the stream."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait_for(self, seq: int, timeout: float = 10.0) -> bool:
        """Wait until the projection has applied stream sequence `seq`."""
        if self.seq >= seq:
            return True
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, waiter))
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            return False
        finally:
            self._waiters.remove((seq, waiter))
        return True

    def get(self, job_id: str) -> JobState | None:
        """Return the state of one job, or None."""
        return self.jobs.get(job_id)

    def recent(
        self,
        limit: int,
        before: str | None = None,
        visible: Callable[[JobState], bool] | None = None,
    ) -> list[JobState]:
        """Return up to `limit` jobs, newest first, older than job id `before`.

        `visible` filters before the count, so a page is full whenever more
        visible jobs exist.
        """
        result = []
        start = bisect.bisect_left(self._order, before) if before else len(self._order)
        for index in range(start - 1, -1, -1):
            job = self.jobs.get(self._order[index])
            if job is not None and (visible is None or visible(job)):
                result.append(job)
                if len(result) >= limit:
                    break
        return result

    async def _follow(self, js: JetStreamContext, head: int) -> None:
        if head == 0:
            self.ready.set()
        async for stored in follow(js):
            event = stored.event
            try:
                state = apply(self.jobs.get(event.job_id), event)
            except InvalidTransition as exc:
                log.warning("projection skips event at seq %d: %s", stored.seq, exc)
            else:
                if event.job_id not in self.jobs:
                    self._insert_order(event.job_id)
                self.jobs[event.job_id] = state
                self.job_seq[event.job_id] = stored.seq
            self.seq = stored.seq
            if not self.ready.is_set() and stored.seq >= head:
                self.ready.set()
            for wanted, waiter in self._waiters:
                if wanted <= stored.seq and not waiter.done():
                    waiter.set_result(None)

    def _insert_order(self, job_id: str) -> None:
        # Job ids sort by creation time, and nearly always arrive in that order.
        if not self._order or self._order[-1] < job_id:
            self._order.append(job_id)
            return
        bisect.insort(self._order, job_id)
