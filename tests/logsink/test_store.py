"""The log file store writes each chunk once, even across a crash mid-write."""

from pathlib import Path

import pytest

from libs.events import LogChunk
from services.logsink.store import LogFileStore

JOB_ID = "job1"
RUN_ID = "run1"


def chunk(seq: int, data: str) -> LogChunk:
    return LogChunk(
        job_id=JOB_ID, run_id=RUN_ID, step="build", seq=seq, stream="stdout", data=data
    )


class CrashError(Exception):
    """Stands in for the process dying at this point."""


def test_store_crash_before_position_no_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LogFileStore(tmp_path)
    store.write([(1, chunk(1, "one\n"))])

    def crash(*args: object) -> None:
        raise CrashError

    monkeypatch.setattr(store, "_save_position", crash)
    with pytest.raises(CrashError):
        store.write([(2, chunk(2, "two\n"))])
    path = store.path_of(JOB_ID, RUN_ID, "build")
    assert path.read_text() == "one\ntwo\n"  # data on disk, position not

    # A new process redelivers the unacked chunk, followed by a new one.
    restarted = LogFileStore(tmp_path)
    restarted.write([(2, chunk(2, "two\n")), (3, chunk(3, "three\n"))])
    assert path.read_text() == "one\ntwo\nthree\n"
    assert (
        path.parent / "build.log.pos"
    ).read_text() == f"3 {len(path.read_bytes())}\n"


def test_store_skips_redelivered_written_chunk(tmp_path: Path) -> None:
    store = LogFileStore(tmp_path)
    store.write([(1, chunk(1, "one\n")), (2, chunk(2, "two\n"))])

    restarted = LogFileStore(tmp_path)
    restarted.write([(2, chunk(2, "two\n"))])
    restarted.write([(2, chunk(2, "two\n")), (4, chunk(3, "three\n"))])

    assert store.path_of(JOB_ID, RUN_ID, "build").read_text() == "one\ntwo\nthree\n"


def test_store_crash_on_first_write_truncates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LogFileStore(tmp_path)

    def crash(*args: object) -> None:
        raise CrashError

    monkeypatch.setattr(store, "_save_position", crash)
    with pytest.raises(CrashError):
        store.write([(7, chunk(1, "first\n"))])

    LogFileStore(tmp_path).write([(7, chunk(1, "first\n"))])
    assert store.path_of(JOB_ID, RUN_ID, "build").read_text() == "first\n"
