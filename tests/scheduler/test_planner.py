"""The pure planner: ageing and its bound, without NATS or Docker."""

from datetime import UTC, datetime, timedelta

from libs.events import JobQueued, JobState, JobSubmitted, Repository, apply
from services.executor.heartbeat import ExecutorHeartbeat
from services.scheduler.planner import plan
from services.scheduler.rules import SchedulingRules, priority_problem

START = datetime(2024, 1, 1, tzinfo=UTC)
EXECUTOR = ExecutorHeartbeat(executor_id="ex", pool="default", slots=1)


def _queued(name: str, priority: int, at: datetime) -> JobState:
    submitted = JobSubmitted(
        job_id=name,
        run_id=f"{name}-run",
        repository=Repository(url="/r"),
        priority=priority,
        at=at,
    )
    return apply(
        apply(None, submitted), JobQueued(job_id=name, run_id=f"{name}-run", at=at)
    )


def test_ageing_lets_old_run_pass_newer_higher() -> None:
    rules = SchedulingRules(ageing_interval=60)
    old = _queued("old", -10, START)
    new = _queued("new", 10, START + timedelta(seconds=rules.overtaking_window))
    jobs = {"old": old, "new": new}
    seqs = {"old-run": 1, "new-run": 2}

    early = plan(jobs, seqs, [EXECUTOR], START + timedelta(seconds=1200), rules)
    late = plan(jobs, seqs, [EXECUTOR], START + timedelta(seconds=1290), rules)

    assert [d.job_id for d in early.decisions if d.dispatch] == ["old"]
    assert [d.job_id for d in late.decisions if d.dispatch] == ["old"]
    assert rules.overtaking_window == 1200


def test_newer_higher_priority_passes_within_window() -> None:
    rules = SchedulingRules(ageing_interval=60)
    jobs = {
        "old": _queued("old", -10, START),
        "new": _queued("new", 10, START + timedelta(seconds=1140)),
    }
    decided = plan(
        jobs,
        {"old-run": 1, "new-run": 2},
        [EXECUTOR],
        START + timedelta(seconds=1150),
        rules,
    )

    assert [d.job_id for d in decided.decisions if d.dispatch] == ["new"]
    assert [(d.job_id, d.position) for d in decided.decisions if not d.dispatch] == [
        ("old", 1)
    ]


def test_priority_range_check() -> None:
    assert priority_problem(10) is None
    assert priority_problem(-10) is None
    assert "from -10 to 10" in (priority_problem(11) or "")
    assert "from -10 to 10" in (priority_problem(-11) or "")
