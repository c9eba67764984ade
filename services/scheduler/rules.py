"""The scheduling rules that need no I/O: priority range, ageing and limits."""

import math
from dataclasses import dataclass
from datetime import datetime

PRIORITY_MIN = -10
PRIORITY_MAX = 10
DEFAULT_PRIORITY = 0


def priority_problem(priority: int) -> str | None:
    """Return why `priority` is invalid for a submission, or None when it is valid.

    The gateway calls this for `priority` of `POST /api/v1/jobs` and answers 422
    with the sentence.
    """
    if PRIORITY_MIN <= priority <= PRIORITY_MAX:
        return None
    return (
        f"priority {priority!r} is out of range; use a whole number from "
        f"{PRIORITY_MIN} to {PRIORITY_MAX} (higher runs first, default "
        f"{DEFAULT_PRIORITY})"
    )


@dataclass(frozen=True, kw_only=True)
class SchedulingRules:
    """The scheduler's limits and timings; None means no limit."""

    max_running: int | None = None
    """Runs dispatched or running at once, over every pool."""
    max_running_per_repository: int | None = None
    max_running_per_key: int | None = None
    """Per `submitted_by` API key id; anonymous submissions share one limit."""
    max_queue_time: float = 3600.0
    """Seconds a run may wait undispatched before it ends `expired`."""
    ageing_interval: float = 60.0
    """Seconds of waiting that raise a run's effective priority by one."""
    executor_ttl: float = 10.0
    """Seconds without a new heartbeat after which an executor counts as gone."""
    exact_positions: int = 100
    """Queue positions up to this are recorded on every change; deeper ones
    only when they move by a tenth or more, to bound the events per dispatch."""

    def __post_init__(self) -> None:
        for name in (
            "max_running",
            "max_running_per_repository",
            "max_running_per_key",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} {value!r} must be at least 1, or None")
        if self.max_queue_time <= 0 or self.ageing_interval <= 0:
            raise ValueError(
                f"max_queue_time {self.max_queue_time!r} and ageing_interval "
                f"{self.ageing_interval!r} must be positive seconds"
            )

    def effective_priority(
        self, priority: int, queued_at: datetime, now: datetime
    ) -> int:
        """Return `priority` plus one for each full `ageing_interval` waited."""
        waited = max(0.0, (now - queued_at).total_seconds())
        return priority + math.floor(waited / self.ageing_interval)

    @property
    def overtaking_window(self) -> float:
        """Seconds after a run's queueing during which a newer run can pass it.

        A run queued `d` seconds later with a priority `k` higher is ahead
        only while `floor(d / ageing_interval) < k`, and `k` is at most the
        width of the priority range.
        """
        return (PRIORITY_MAX - PRIORITY_MIN) * self.ageing_interval


def repository_key(url: str) -> str:
    """Return the name the per-repository limit counts a repository URL under.

    Trailing slashes and a `.git` suffix are dropped, so `…/app.git` and
    `…/app/` count as one repository.
    """
    key = url.rstrip("/")
    if key.endswith(".git"):
        key = key[: -len(".git")]
    return key
