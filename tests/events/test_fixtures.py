"""Recorded streams of earlier producers still decode, fold and audit today.

`stream-v1.jsonl` is a real job recorded with `stasis events JOB --json`: a
step that passes on its second attempt and stores an artifact, a failing
step, a post step, then a retry of the whole job. `stream-v0.jsonl` is written
by hand for an older producer: no `prev_hash`, and none of the fields that
today have defaults.
"""

import json
from pathlib import Path

import msgspec
import pytest

from libs.events import fold
from libs.events.audit import StoredMessage, audit_messages, messages_from_lines
from libs.events.types import EVENT_TYPES, decode_event, event_tag

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str) -> list[StoredMessage]:
    return messages_from_lines((FIXTURES / name).read_text().splitlines())


@pytest.mark.parametrize("name", ["stream-v0.jsonl", "stream-v1.jsonl"])
def test_fixture_fields_still_exist(name: str) -> None:
    fields = {
        t.__struct_config__.tag: {f.encode_name for f in msgspec.structs.fields(t)}
        for t in EVENT_TYPES
    }

    for message in load(name):
        stored = json.loads(message.data)
        known = fields[stored["type"]] | {"type"}
        assert set(stored) - known == set(), (message.seq, stored["type"])
        assert message.headers["Stasis-Event-Type"] == stored["type"]


def test_recorded_v1_stream_folds() -> None:
    messages = load("stream-v1.jsonl")

    state = fold(decode_event(m.data) for m in messages)

    assert state is not None
    assert state.submitted_by == "d70f9fc8"
    assert state.repository.branch == "main"
    assert [run.status for run in state.runs] == ["failed", "failed"]
    for run in state.runs:
        steps = {step.name: step for step in run.steps}
        assert run.attempt == 1
        assert run.commit is not None
        assert steps["flaky"].status == "succeeded"
        assert steps["flaky"].attempt == 2
        assert steps["build"].status == "failed"
        assert steps["build"].exit_code == 3
        assert steps["report"].status == "succeeded"
        assert [a.name for a in run.artifacts] == ["flaky.tar.gz"]
        assert len(run.artifacts[0].sha256) == 64
        assert run.reason == "step 'build' failed"


def test_recorded_v1_stream_audits_intact() -> None:
    messages = load("stream-v1.jsonl")

    report = audit_messages(messages[0].subject.split(".")[2], messages)

    assert report.verdict == "intact"
    assert report.rejected == []
    assert report.head_hash is not None


def test_recorded_v1_stream_edit_detected() -> None:
    messages = load("stream-v1.jsonl")
    edited = messages[4]
    assert b'"commit":"' in edited.data
    changed = msgspec.structs.replace(
        edited, data=edited.data.replace(b'"commit":"', b'"commit":"0', 1)
    )

    report = audit_messages("job", [*messages[:4], changed, *messages[5:]])

    assert report.verdict == "tampered"
    assert [(f.kind, f.seq) for f in report.findings] == [("altered", edited.seq)]


def test_older_producer_stream_decodes_and_folds() -> None:
    messages = load("stream-v0.jsonl")

    events = [decode_event(m.data) for m in messages]
    state = fold(events)

    assert all(event.prev_hash is None for event in events)
    assert [event_tag(e) for e in events][:3] == [
        "job.submitted",
        "job.queued",
        "run.started",
    ]
    assert state is not None
    assert state.status == "succeeded"
    assert state.submitted_by is None
    assert state.trigger == "manual"
    assert state.pool == "default"
    assert state.priority == 0
    assert state.labels == ()
    assert state.secret_names == ()
    run = state.last_run
    assert run.attempt == 1
    assert run.executor_id == "old-executor-1"
    assert run.last_log_seq == 0
    assert [(s.name, s.status, s.attempt) for s in run.steps] == [
        ("build", "succeeded", 1),
        ("cleanup", "succeeded", 1),
    ]
    assert run.artifacts[0].sha256 == "ab" * 32


def test_older_producer_stream_is_unchained() -> None:
    messages = load("stream-v0.jsonl")

    report = audit_messages("01jv0jv0jv0jv0jv0jv0jv0jv0", messages)

    assert report.verdict == "unchained"
    assert report.findings == []
    assert report.rejected == []
