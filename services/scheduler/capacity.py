"""Free executor slots of each pool, as the scheduler counts them.

An executor's slots come from its heartbeat; its busy slots are counted from
the events (runs `running` on it) plus dispatched orders that no executor has
started yet, so a dispatch is counted before the next heartbeat arrives.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from libs.events import JobState
from services.executor.heartbeat import ExecutorHeartbeat


@dataclass
class _Executor:
    executor_id: str
    labels: frozenset[str]
    free: int


@dataclass
class PoolCapacity:
    """The live executors of one pool and their free slots."""

    pool: str
    executors: list[_Executor] = field(default_factory=list)

    def place(self, labels: Iterable[str]) -> str | None:
        """Take a free slot of an executor with every label; return its id or None.

        The executor with the fewest labels wins, so executors with rare labels
        stay free for the runs that need them.
        """
        wanted = frozenset(labels)
        matching = [e for e in self.executors if wanted <= e.labels and e.free > 0]
        if not matching:
            return None
        chosen = min(matching, key=lambda e: (len(e.labels), -e.free, e.executor_id))
        chosen.free -= 1
        return chosen.executor_id

    def why_not(self, labels: Iterable[str]) -> str:
        """Return why a run with `labels` cannot be placed now, as a held reason."""
        wanted = sorted(set(labels))
        if not self.executors:
            return f"no live executor in pool {self.pool!r}"
        matching = [e for e in self.executors if set(wanted) <= e.labels]
        if not matching:
            return f"no live executor in pool {self.pool!r} has labels {wanted!r}"
        with_labels = f" with labels {wanted!r}" if wanted else ""
        return (
            f"every slot of the {len(matching)} live executor(s) in pool "
            f"{self.pool!r}{with_labels} is busy"
        )


def pool_capacities(
    heartbeats: Iterable[ExecutorHeartbeat], jobs: Mapping[str, JobState]
) -> dict[str, PoolCapacity]:
    """Return each pool's live executors with the slots that are still free."""
    running: dict[str, int] = {}
    pending: list[JobState] = []
    for job in jobs.values():
        run = job.last_run
        if run.status == "running" and run.executor_id:
            running[run.executor_id] = running.get(run.executor_id, 0) + 1
        elif run.status == "queued" and run.dispatched_at is not None:
            pending.append(job)

    pools: dict[str, PoolCapacity] = {}
    for beat in heartbeats:
        free = beat.slots - running.get(beat.executor_id, 0)
        capacity = pools.setdefault(beat.pool, PoolCapacity(beat.pool))
        capacity.executors.append(
            _Executor(beat.executor_id, frozenset(beat.labels), max(0, free))
        )
    # Orders with more labels have fewer executors to go to, so place them first.
    for job in sorted(pending, key=lambda j: -len(j.labels)):
        if job.pool in pools:
            pools[job.pool].place(job.labels)
    return pools
