"""The fold: unit tests and properties over generated event sequences."""

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.events import (
    CancelRequested,
    InvalidTransition,
    JobQueued,
    JobSubmitted,
    PipelineLoaded,
    Repository,
    RunFinished,
    RunStarted,
    SourceCheckedOut,
    StepFinished,
    StepPlan,
    StepStarted,
    apply,
    decode_event,
    encode,
    fold,
)
from libs.events.fold import TERMINAL, JobState

JOB = "01jobjobjobjobjobjobjobjob"
RUN = "01runrunrunrunrunrunrunrun"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def happy_path(outcome: str = "succeeded") -> list:
    ids = {"job_id": JOB, "run_id": RUN}
    return [
        JobSubmitted(**ids, at=at(0), repository=Repository(url="/src")),
        JobQueued(**ids, at=at(1)),
        RunStarted(**ids, at=at(2), executor_id="ex1"),
        SourceCheckedOut(**ids, at=at(3), commit="a" * 40),
        PipelineLoaded(
            **ids,
            at=at(4),
            image="busybox",
            steps=[
                StepPlan(name="build", type="exec"),
                StepPlan(name="post", type="post"),
            ],
        ),
        StepStarted(**ids, at=at(5), step="build"),
        StepFinished(**ids, at=at(6), step="build", outcome="failed", exit_code=2),
        StepStarted(**ids, at=at(7), step="build", attempt=2),
        StepFinished(**ids, at=at(8), step="build", outcome="succeeded", attempt=2),
        StepFinished(
            **ids, at=at(9), step="post", outcome="skipped", reason="if false"
        ),
        RunFinished(**ids, at=at(10), outcome=outcome, duration_s=8.0),
    ]


def test_fold_happy_path_state() -> None:
    state = fold(happy_path())
    assert state is not None
    run = state.last_run
    assert state.status == "succeeded"
    assert run.executor_id == "ex1"
    assert run.commit == "a" * 40
    assert run.started_at == at(2)
    assert run.finished_at == at(10)
    build, post = run.steps
    assert build.status == "succeeded"
    assert build.attempt == 2
    assert build.exit_code is None
    assert post.status == "skipped"
    assert post.reason == "if false"


def test_fold_of_nothing_is_none() -> None:
    assert fold([]) is None


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (happy_path()[1:2], "before job.submitted"),
        (happy_path()[:1] * 2, "already submitted"),
        (happy_path()[:3] + happy_path()[1:2], "goes backwards"),
        (happy_path() + happy_path()[-1:], "finished twice"),
        (happy_path()[:2] + happy_path()[3:4], "cannot follow"),
        (happy_path()[:6] + happy_path()[5:6], "started after attempt"),
        (happy_path()[:5] + happy_path()[6:7], "finished while 'pending'"),
        (happy_path()[:11] + happy_path()[5:6], "goes backwards"),
    ],
)
def test_fold_rejects_invalid_transitions(events: list, message: str) -> None:
    with pytest.raises(InvalidTransition, match=message):
        fold(events)


def test_fold_rejects_unknown_run_and_step() -> None:
    events = happy_path()[:5]
    state = fold(events)
    other = StepStarted(job_id=JOB, run_id="x" * 26, step="build")
    with pytest.raises(InvalidTransition, match="has no run"):
        apply(state, other)
    missing = StepStarted(job_id=JOB, run_id=RUN, step="nope")
    with pytest.raises(InvalidTransition, match="no step 'nope'"):
        apply(state, missing)


def test_cancel_after_finish_changes_nothing() -> None:
    state = fold(happy_path())
    cancel = CancelRequested(job_id=JOB, run_id=RUN)
    assert apply(state, cancel) == state


def test_cancel_before_start_is_recorded() -> None:
    state = fold([*happy_path()[:2], CancelRequested(job_id=JOB, run_id=RUN)])
    assert state is not None
    assert state.last_run.cancel_requested
    assert state.status == "queued"


def test_events_round_trip_through_json() -> None:
    for event in happy_path():
        assert decode_event(encode(event)) == event


def test_unknown_event_type_fails_to_decode() -> None:
    data = b'{"type":"job.exploded","job_id":"a","run_id":"b"}'
    with pytest.raises(msgspec.ValidationError):
        decode_event(data)


@settings(max_examples=200, deadline=None)
@given(
    cut=st.integers(min_value=1, max_value=11),
    outcome=st.sampled_from(sorted(TERMINAL)),
)
def test_every_prefix_folds_to_valid_state(cut: int, outcome: str) -> None:
    state = fold(happy_path(outcome)[:cut])
    assert isinstance(state, JobState)
    run = state.last_run
    assert run.status in {"submitted", "queued", "running", *TERMINAL}
    assert (run.finished_at is not None) == run.finished
    for step in run.steps:
        assert step.status in {
            "pending",
            "running",
            "succeeded",
            "failed",
            "skipped",
            "timed_out",
            "cancelled",
        }


@settings(max_examples=300, deadline=None)
@given(
    cut=st.integers(min_value=2, max_value=11),
    back=st.integers(min_value=1, max_value=10),
)
def test_replaying_an_earlier_lifecycle_event_is_rejected(cut: int, back: int) -> None:
    events = happy_path()
    earlier = events[max(1, cut - 1 - back)]
    if not isinstance(earlier, JobQueued | RunStarted | RunFinished | JobSubmitted):
        return
    state = fold(events[:cut])
    if isinstance(earlier, RunStarted) and state.last_run.status == "queued":
        return
    if isinstance(earlier, JobQueued) and state.last_run.status == "submitted":
        return
    if isinstance(earlier, RunFinished) and not state.last_run.finished:
        return
    with pytest.raises(InvalidTransition):
        apply(state, earlier)
