"""Tests of the executor's output capture, rendering, batching and StepLog."""

import random
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.events import LogChunk, decode_chunk, subjects
from libs.events.journal import read_subject
from services.executor.capture import (
    CONTINUATION,
    MAX_ESCAPE_BYTES,
    CapturedText,
    ChunkBatcher,
    OutputCapture,
    Stream,
    strip_control,
)
from services.executor.logs import LogBudget, StepLog, chunk_bytes
from services.executor.masking import SecretMasker

# A complete CSI or BEL-ended OSC sequence, to check that no piece cuts one.
ESCAPE = re.compile(rb"\x1b\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]|\x1b\][^\x07]*\x07")


class FakeClock:
    """Clock that returns a set time, so that tests can check `at`."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def feed_frames(
    capture: OutputCapture,
    data: bytes,
    sizes: list[int],
    stream: Stream = "stdout",
) -> list[CapturedText]:
    """Feed `data` in frames of the given sizes, then the rest, then flush."""
    pieces: list[CapturedText] = []
    start = 0
    for size in sizes:
        pieces += capture.feed(stream, data[start : start + size])
        start += size
    pieces += capture.feed(stream, data[start:])
    pieces += capture.flush()
    return pieces


def random_sizes(seed: int, total: int, largest: int) -> list[int]:
    rng = random.Random(seed)
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(rng.randint(1, largest))
    return sizes


def check_pieces(pieces: list[CapturedText], max_line_bytes: int) -> None:
    """Check the size bound and that each text is its raw bytes decoded."""
    for piece in pieces:
        assert len(piece.raw) <= max_line_bytes
        decoded = piece.raw.decode("utf-8", errors="replace")
        assert piece.body == decoded
        assert piece.text == decoded + (CONTINUATION if piece.continued else "")


def check_escapes_whole(pieces: list[CapturedText]) -> None:
    """Check that every ESC byte in a piece starts a sequence complete in it."""
    for piece in pieces:
        escapes = piece.raw.count(b"\x1b")
        assert escapes == len(ESCAPE.findall(piece.raw)), piece.raw


def test_carriage_returns_kept_as_written() -> None:
    capture = OutputCapture()

    pieces = capture.feed("stdout", b"a\rb\rc\n")

    assert [piece.text for piece in pieces] == ["a\rb\rc\n"]
    assert pieces[0].raw == b"a\rb\rc\n"
    assert strip_control(pieces[0].text) == "c\n"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a\rb\rc", "c"),
        ("\x1b[1;31mred\x1b[0m plain", "red plain"),
        ("\x1b]0;window title\x07visible", "visible"),
        ("\x1b]8;;https://example.test/\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("col1\tcol2\x07\x00\x7f", "col1\tcol2"),
        ("downloading 50%\r\x1b[Kdone", "done"),
        ("hello\rab", "abllo"),
        ("crlf line\r\nnext", "crlf line\nnext"),
        ("\x1b[?25lhidden cursor\x1b[?25h", "hidden cursor"),
        ("first\nsecond\rSECOND\n", "first\nSECOND\n"),
    ],
)
def test_strip_control_renders_terminal_view(text: str, shown: str) -> None:
    assert strip_control(text) == shown


def test_long_line_split_with_continuation_marks() -> None:
    max_line = 64 * 1024
    long_line = b"x" * (3 * 1024 * 1024) + b"\n"
    data = long_line + b"after 1\nafter 2\n"
    capture = OutputCapture(max_line)

    pieces = feed_frames(capture, data, random_sizes(1, len(data), 100_000))

    check_pieces(pieces, max_line)
    assert b"".join(piece.raw for piece in pieces) == data
    assert "".join(piece.body for piece in pieces) == data.decode()
    continued = [piece for piece in pieces if piece.continued]
    assert len(continued) == len(long_line) // max_line
    assert all(piece.text.endswith(CONTINUATION) for piece in continued)
    assert [piece.text for piece in pieces[-2:]] == ["after 1\n", "after 2\n"]


def test_long_line_in_one_frame_split() -> None:
    capture = OutputCapture(16)

    pieces = capture.feed("stdout", b"0123456789" * 5 + b"\n")

    assert [piece.raw for piece in pieces] == [
        b"0123456789012345",
        b"6789012345678901",
        b"2345678901234567",
        b"89\n",
    ]
    assert [piece.continued for piece in pieces] == [True, True, True, False]


def test_partial_line_stays_bounded() -> None:
    capture = OutputCapture(1024)
    pieces: list[CapturedText] = []

    for _ in range(1000):
        pieces += capture.feed("stderr", b"y" * 100)
        assert capture.pending_bytes() < 1024

    assert sum(len(piece.raw) for piece in pieces) + capture.pending_bytes() == 100_000
    assert all(piece.continued for piece in pieces)


def test_output_without_final_newline_flushed() -> None:
    capture = OutputCapture()

    completed = capture.feed("stdout", b"done\nno newline")
    flushed = capture.flush()

    assert [piece.text for piece in completed] == ["done\n"]
    assert [piece.text for piece in flushed] == ["no newline"]
    assert flushed[0].raw == b"no newline"
    assert not flushed[0].continued
    assert capture.flush() == []
    assert capture.pending_bytes() == 0


def test_flushed_partial_line_continues_later() -> None:
    capture = OutputCapture()

    capture.feed("stdout", b"Downloading")
    first = capture.flush(final=False)
    second = capture.feed("stdout", b"... done\n")

    assert [piece.text for piece in first] == ["Downloading"]
    assert [piece.text for piece in second] == ["... done\n"]


def test_random_bytes_then_text() -> None:
    rng = random.Random(512)
    data = bytes(rng.randrange(256) for _ in range(512)) + "héllo wörld\n".encode()
    capture = OutputCapture(64)

    pieces = feed_frames(capture, data, random_sizes(2, len(data), 7))

    check_pieces(pieces, 64)
    assert b"".join(piece.raw for piece in pieces) == data
    text = "".join(piece.body for piece in pieces)
    assert "\ufffd" in text
    assert text == data.decode("utf-8", errors="replace")
    assert text.endswith("héllo wörld\n")


def test_truncated_character_flushed_as_replacement() -> None:
    capture = OutputCapture()

    capture.feed("stdout", b"ok \xe2\x82")
    pieces = capture.flush()

    assert [piece.text for piece in pieces] == ["ok \ufffd"]
    assert pieces[0].raw == b"ok \xe2\x82"


def test_euro_sign_split_across_feeds() -> None:
    capture = OutputCapture()

    first = capture.feed("stdout", b"price: \xe2")
    paused = capture.flush(final=False)
    second = capture.feed("stdout", b"\x82\xac 5\n")

    assert first == []
    assert [piece.text for piece in paused] == ["price: "]
    assert [piece.text for piece in second] == ["€ 5\n"]
    assert second[0].raw == b"\xe2\x82\xac 5\n"


@pytest.mark.parametrize("character", ["€", "é", "😀"])
def test_utf8_never_cut_at_size_bound(character: str) -> None:
    encoded = character.encode()
    for offset in range(20):
        data = b"a" * offset + encoded * 10 + b"\n"
        capture = OutputCapture(16)

        pieces = feed_frames(capture, data, [])

        check_pieces(pieces, 16)
        assert "\ufffd" not in "".join(piece.text for piece in pieces)
        assert "".join(piece.body for piece in pieces) == data.decode()


def test_escape_sequence_split_across_feeds() -> None:
    capture = OutputCapture()

    first = capture.feed("stdout", b"\x1b[3")
    paused = capture.flush(final=False)
    second = capture.feed("stdout", b"1mred\x1b[0m\n")

    assert first == []
    assert paused == []
    assert [piece.text for piece in second] == ["\x1b[31mred\x1b[0m\n"]


@pytest.mark.parametrize(
    "sequence",
    [b"\x1b[38;5;208m", b"\x1b[0m", b"\x1b]0;build title\x07"],
)
def test_escape_sequence_never_cut_at_size_bound(sequence: bytes) -> None:
    for offset in range(40):
        data = b"a" * offset + sequence + b"z" * 40 + sequence + b"\n"
        for sizes in ([], [offset + 3], [1] * len(data)):
            capture = OutputCapture(32)

            pieces = feed_frames(capture, data, sizes)

            check_pieces(pieces, 32)
            check_escapes_whole(pieces)
            assert b"".join(piece.raw for piece in pieces) == data


def test_pause_flush_holds_escape_sequence() -> None:
    capture = OutputCapture()

    capture.feed("stdout", b"50%\x1b]0;progr")
    paused = capture.flush(final=False)
    rest = capture.feed("stdout", b"ess\x07\n")

    assert [piece.raw for piece in paused] == [b"50%"]
    assert [piece.raw for piece in rest] == [b"\x1b]0;progress\x07\n"]


def test_overlong_escape_sequence_emitted_as_is() -> None:
    data = b"\x1b[" + b"1" * (4 * MAX_ESCAPE_BYTES) + b"m tail\n"
    capture = OutputCapture(64)

    pieces = feed_frames(capture, data, random_sizes(3, len(data), 50))

    check_pieces(pieces, 64)
    assert b"".join(piece.raw for piece in pieces) == data


def test_streams_keep_tags_and_order() -> None:
    capture = OutputCapture()
    pieces: list[CapturedText] = []

    pieces += capture.feed("stdout", b"out 1\n")
    pieces += capture.feed("stderr", b"err 1\n")
    pieces += capture.feed("stdout", b"out 2 ")
    pieces += capture.feed("stderr", b"err 2\nerr 3 ")
    pieces += capture.feed("stdout", b"continued\n")
    pieces += capture.flush()

    assert [(piece.stream, piece.text) for piece in pieces] == [
        ("stdout", "out 1\n"),
        ("stderr", "err 1\n"),
        ("stderr", "err 2\n"),
        ("stdout", "out 2 continued\n"),
        ("stderr", "err 3 "),
    ]


@pytest.mark.parametrize("first", ["stdout", "stderr"])
def test_flush_orders_partial_lines_by_arrival(first: Stream) -> None:
    second: Stream = "stderr" if first == "stdout" else "stdout"
    capture = OutputCapture()

    capture.feed(first, b"early ")
    capture.feed(second, b"late ")
    capture.feed(first, b"more")
    pieces = capture.flush()

    assert [(piece.stream, piece.text) for piece in pieces] == [
        (first, "early more"),
        (second, "late "),
    ]


def test_streams_decode_independently() -> None:
    capture = OutputCapture()

    capture.feed("stdout", b"\xe2\x82")
    capture.feed("stderr", b"\xc3")
    out = capture.feed("stdout", b"\xac\n")
    err = capture.feed("stderr", b"\xa9\n")

    assert [piece.text for piece in out] == ["€\n"]
    assert [piece.text for piece in err] == ["é\n"]


def test_capture_time_of_first_byte() -> None:
    clock = FakeClock()
    capture = OutputCapture(clock=clock)

    capture.feed("stdout", b"started ")
    clock.now = 105.0
    pieces = capture.feed("stdout", b"finished\nnext\n")

    assert [piece.at for piece in pieces] == [100.0, 105.0]


def test_unknown_stream_rejected() -> None:
    capture = OutputCapture()

    with pytest.raises(ValueError, match="invalid stream 'stdin'"):
        capture.feed("stdin", b"x")  # type: ignore[arg-type]


def test_too_small_line_bound_rejected() -> None:
    with pytest.raises(ValueError, match="invalid max_line_bytes 8"):
        OutputCapture(8)


def test_seq_sized_output_completes_quickly() -> None:
    data = "".join(f"{number}\n" for number in range(1, 300_001)).encode()
    capture = OutputCapture()

    started = time.perf_counter()
    pieces = feed_frames(capture, data, [32 * 1024] * (len(data) // (32 * 1024)))
    elapsed = time.perf_counter() - started

    assert len(pieces) == 300_000
    assert pieces[-1].text == "300000\n"
    assert elapsed < 10


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(
        st.sampled_from(
            [
                *(b"a", b"\n", b"\r", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80"),
                *(b"\xe2", b"\xff", b"\x80"),
                *(b"\x1b[1;31m", b"\x1b]0;t\x07", b"\x1b"),
            ]
        ),
        max_size=120,
    ).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    pause=st.booleans(),
)
def test_capture_preserves_bytes_and_text(
    data: bytes, cuts: list[int], pause: bool
) -> None:
    capture = OutputCapture(16)
    pieces: list[CapturedText] = []
    start = 0
    for cut in sorted(set(cuts)):
        pieces += capture.feed("stdout", data[start:cut])
        if pause:
            pieces += capture.flush(final=False)
        start = max(start, cut)
    pieces += capture.feed("stdout", data[start:])
    pieces += capture.flush()

    check_pieces(pieces, 16)
    assert b"".join(piece.raw for piece in pieces) == data
    text = "".join(piece.body for piece in pieces)
    assert text == data.decode("utf-8", errors="replace")


def piece(stream: Stream, text: str, at: float = 1.0) -> CapturedText:
    return CapturedText(stream, text, text.encode(), at)


def test_batcher_bounds_batch_size() -> None:
    batcher = ChunkBatcher(max_batch_bytes=10)
    batches = []

    for index in range(10):
        batches += batcher.add(piece("stdout", "abcd", at=float(index)))
    batches += batcher.drain()

    assert [batch.text for batch in batches] == ["abcdabcd"] * 5
    assert [batch.first_at for batch in batches] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert all(len(batch.raw) <= 10 for batch in batches)


def test_batcher_emits_full_batch_at_once() -> None:
    batcher = ChunkBatcher(max_batch_bytes=8)

    assert batcher.add(piece("stdout", "abcd")) == []
    full = batcher.add(piece("stdout", "efgh"))

    assert [batch.text for batch in full] == ["abcdefgh"]
    assert batcher.pending_since is None


def test_batcher_splits_at_stream_change() -> None:
    batcher = ChunkBatcher()
    batches = []

    for stream, text in [("stdout", "a\n"), ("stdout", "b\n"), ("stderr", "c\n")]:
        batches += batcher.add(piece(stream, text))  # type: ignore[arg-type]
    batches += batcher.add(piece("stdout", "d\n"))
    batches += batcher.drain()

    assert [(batch.stream, batch.text) for batch in batches] == [
        ("stdout", "a\nb\n"),
        ("stderr", "c\n"),
        ("stdout", "d\n"),
    ]
    assert batcher.drain() == []


def test_batcher_counts_text_size() -> None:
    batcher = ChunkBatcher(max_batch_bytes=10)
    invalid = CapturedText("stdout", "\ufffd\ufffd\ufffd", b"\xff\xff\xff", 1.0)

    assert batcher.add(invalid) == []
    batches = batcher.add(invalid)

    assert [batch.raw for batch in batches] == [b"\xff\xff\xff"]


def test_batcher_oversize_piece_alone() -> None:
    batcher = ChunkBatcher(max_batch_bytes=4)

    before = batcher.add(piece("stdout", "ab"))
    big = batcher.add(piece("stdout", "0123456789"))

    assert [batch.text for batch in before + big] == ["ab", "0123456789"]


def test_batcher_reports_pending_since() -> None:
    batcher = ChunkBatcher()

    batcher.add(piece("stdout", "a", at=7.0))
    batcher.add(piece("stdout", "b", at=9.0))

    assert batcher.pending_since == 7.0
    assert [batch.first_at for batch in batcher.drain()] == [7.0]
    assert batcher.pending_since is None


# StepLog: the capture pipeline end to end on a real NATS server, from output
# bytes to the chunks stored on the step's subject.


async def stored_chunks(js: Any, step: str = "build") -> list[LogChunk]:
    subject = subjects.log_subject("job1", "run1", step)
    messages = await read_subject(js, subjects.LOGS_STREAM, subject)
    return [decode_chunk(message.data) for message in messages]


def output_bytes(chunks: list[LogChunk], stream: str = "stdout") -> bytes:
    return b"".join(chunk_bytes(chunk) for chunk in chunks if chunk.stream == stream)


async def test_step_log_masks_raw_bytes(js: Any) -> None:
    step_log = StepLog(js, "job1", "run1", "build", masker=SecretMasker(["hunter22"]))

    await step_log.write("stdout", b"\xffpass hunter22\n")
    await step_log.close()
    chunks = await stored_chunks(js)

    assert chunks[0].data == "\ufffdpass ********\n"
    assert chunk_bytes(chunks[0]) == b"\xffpass ********\n"
    assert b"hunter22" not in output_bytes(chunks)


async def test_step_log_plain_text_has_no_raw(js: Any) -> None:
    step_log = StepLog(js, "job1", "run1", "build")

    await step_log.write("stdout", "caf\u00e9\n".encode())
    await step_log.close()
    chunks = await stored_chunks(js)

    assert [chunk.raw_b64 for chunk in chunks] == [None, None]


async def test_step_log_pipelined_chunks_in_order(js: Any) -> None:
    step_log = StepLog(js, "job1", "run1", "build", max_batch_bytes=64, max_in_flight=4)
    data = b"".join(b"line %d\n" % number for number in range(2000))

    for start in range(0, len(data), 1000):
        await step_log.write("stdout", data[start : start + 1000])
    last_seq = await step_log.close()
    chunks = await stored_chunks(js)

    assert output_bytes(chunks) == data
    assert [chunk.seq for chunk in chunks] == list(range(1, len(chunks) + 1))
    assert len(chunks) > 100
    assert chunks[-1].final
    assert last_seq > 0


async def test_step_log_ends_with_final_chunk(js: Any) -> None:
    step_log = StepLog(js, "job1", "run1", "build")

    await step_log.write("stdout", b"no newline")
    await step_log.close()
    await step_log.close()
    chunks = await stored_chunks(js)

    assert [chunk.data for chunk in chunks] == ["no newline", ""]
    assert [chunk.final for chunk in chunks] == [False, True]


async def test_step_log_truncates_and_keeps_tail(js: Any) -> None:
    budget = LogBudget(1000)
    step_log = StepLog(js, "job1", "run1", "build", budget=budget, tail_bytes=100)
    data = b"".join(b"%04d\n" % number for number in range(2000))

    await step_log.write("stdout", data)
    await step_log.note("exit code 3")
    await step_log.close()
    chunks = await stored_chunks(js)
    notes = [chunk.data for chunk in chunks if chunk.stream == "system"]
    output = output_bytes(chunks)

    assert step_log.truncated
    assert len([note for note in notes if note.startswith("log truncated:")]) == 1
    assert notes[-2].startswith("log tail: 8900 bytes")
    assert output == data[:1000] + data[-100:]
    assert "exit code 3\n" in notes


async def test_log_budget_shared_by_steps(js: Any) -> None:
    budget = LogBudget(10)
    first = StepLog(js, "job1", "run1", "build", budget=budget, tail_bytes=0)
    second = StepLog(js, "job1", "run1", "test", budget=budget, tail_bytes=0)

    await first.write("stdout", b"12345678\n")
    await second.write("stdout", b"abc\n")
    await first.close()
    await second.close()
    second_chunks = await stored_chunks(js, "test")

    assert not first.truncated
    assert second.truncated
    assert output_bytes(second_chunks) == b""
    assert second_chunks[0].data.startswith("log truncated:")


def test_log_budget_rejects_negative_size() -> None:
    with pytest.raises(ValueError, match="invalid max_log_bytes -1"):
        LogBudget(-1)
