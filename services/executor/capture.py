"""Turn a container's raw output frames into bounded, decoded pieces of log text.

Docker delivers a step's output as ``(stream, bytes)`` frames whose boundaries fall
anywhere, even inside a UTF-8 character or an ANSI escape sequence. `OutputCapture`
turns them into `CapturedText` pieces of at most one line each, `ChunkBatcher` groups
pieces into log chunks, and `strip_control` renders text as a terminal would show it.
Everything here is synchronous and does no I/O, so the executor owns the sockets and
the timers.
"""

import codecs
import re
import time
from collections.abc import Callable
from typing import Final, Literal, get_args

import msgspec

Stream = Literal["stdout", "stderr"]
STREAMS: Final[tuple[Stream, ...]] = get_args(Stream)

CONTINUATION: Final = "\u21a9\n"
"""Mark ("↩" and a newline) that ends the text of a piece cut from a longer line.

The raw bytes of a piece never contain the mark, so the raw bytes of all pieces,
joined, are the output byte for byte. Code should test `CapturedText.continued`
rather than the mark, because a program may print "↩" itself.
"""

DEFAULT_MAX_LINE_BYTES: Final = 64 * 1024
MIN_LINE_BYTES: Final = 16
DEFAULT_MAX_BATCH_BYTES: Final = 64 * 1024

MAX_ESCAPE_BYTES: Final = 256
"""Maximum length of an escape sequence that a line split keeps whole.

A longer or malformed sequence is ordinary bytes to the splitter and may be cut.
OSC 8 hyperlinks are the longest sequences that tools commonly print.
"""

# The escape sequences of ECMA-48, in four kinds. CSI is ESC [, parameter bytes,
# intermediate bytes and a final byte. OSC, DCS, SOS, PM and APC are strings ended
# by BEL or by ST (ESC \). The rest are ESC, intermediate bytes and a final byte, or
# ESC and one byte.
_ESCAPE_SOURCE = (
    r"\x1b\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"
    r"|\x1b[\]PX^_][^\x07\x1b\n]*(?:\x07|\x1b\\)"
    r"|\x1b[\x20-\x2f]+[\x30-\x7e]"
    r"|\x1b[\x30-\x4f\x51-\x57\x59-\x5a\x5c\x60-\x7e]"
)
# Prefix of a sequence that the end of the buffer cuts short.
_ESCAPE_PREFIX_SOURCE = (
    r"\x1b(?:\[[\x30-\x3f]*[\x20-\x2f]*|[\]PX^_][^\x07\x1b\n]*\x1b?|[\x20-\x2f]*)"
)
_ESCAPE_BYTES = re.compile(_ESCAPE_SOURCE.encode("ascii"))
_ESCAPE_PREFIX_BYTES = re.compile(_ESCAPE_PREFIX_SOURCE.encode("ascii"))
_ESCAPE_TEXT = re.compile(_ESCAPE_SOURCE)
_ERASE_LINE_TEXT = re.compile(r"\x1b\[[02]?K")
# C0 controls except tab and newline, DEL, and the C1 controls.
_CONTROL_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class CapturedText(msgspec.Struct, frozen=True):
    """Piece of one stream's output: a line, part of a long line, or a partial line.

    `text` is `raw` decoded as UTF-8, with U+FFFD for each invalid sequence, followed
    by CONTINUATION when `continued` is true. `at` is the `time.time()` of the feed
    that delivered the piece's first byte.
    """

    stream: Stream
    text: str
    raw: bytes
    at: float
    continued: bool = False

    @property
    def body(self) -> str:
        """Text without the continuation mark, which is what a masker should see."""
        if self.continued:
            return self.text[: -len(CONTINUATION)]
        return self.text


class Batch(msgspec.Struct, frozen=True):
    """Consecutive pieces of one stream, joined, ready to become one log chunk."""

    stream: Stream
    text: str
    raw: bytes
    first_at: float


class _StreamState:
    """Decoder and partial line of one stream."""

    __slots__ = ("at", "decoder", "order", "pending")

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.pending = b""
        # Capture time of the first pending byte, and the number of the feed that
        # delivered it, which orders the partial lines that flush() releases.
        self.at = 0.0
        self.order = 0


class OutputCapture:
    """Split the stdout and stderr of one step into `CapturedText` pieces.

    A piece is a complete line as soon as its newline arrives. A line of more than
    `max_line_bytes` bytes, counting its newline, is cut into pieces of at most that
    many bytes, and all but the last are marked `continued`. A cut never falls inside
    a UTF-8 character or inside an escape sequence of at most MAX_ESCAPE_BYTES bytes.
    Each stream keeps fewer than `max_line_bytes` bytes of partial line between
    calls. Carriage returns and escape sequences stay in the text as written.

    Pieces come out in the order of the feeds that completed them. Within one stream
    that is byte order. `flush()` returns the partial lines of both streams in the
    order in which their first bytes arrived.
    """

    def __init__(
        self,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_line_bytes < MIN_LINE_BYTES:
            raise ValueError(
                f"invalid max_line_bytes {max_line_bytes!r}: "
                f"use at least {MIN_LINE_BYTES} bytes"
            )
        self._max = max_line_bytes
        self._clock = clock
        self._states = {stream: _StreamState() for stream in STREAMS}
        self._feeds = 0

    @property
    def max_line_bytes(self) -> int:
        """Maximum size in bytes of one piece's raw bytes."""
        return self._max

    def pending_bytes(self) -> int:
        """Return the number of bytes held as partial lines over both streams."""
        return sum(len(state.pending) for state in self._states.values())

    def feed(self, stream: Stream, data: bytes) -> list[CapturedText]:
        """Add one frame of output and return the pieces that it completes."""
        state = self._state(stream)
        if not data:
            return []

        self._feeds += 1
        now = self._clock()
        carried = len(state.pending)
        if not carried:
            state.at, state.order = now, self._feeds
        buffer = state.pending + data

        newline = buffer.rfind(b"\n")
        if newline == -1:
            return self._cut_partial(stream, state, buffer, carried, now)

        pieces = self._split_lines(stream, state, buffer[: newline + 1], now)
        state.at, state.order = now, self._feeds
        rest = buffer[newline + 1 :]
        pieces += self._cut_partial(stream, state, rest, 0, now)
        return pieces

    def flush(self, *, final: bool = True) -> list[CapturedText]:
        """Release the partial lines of both streams.

        With `final` true (the end of output), every held byte comes out, and an
        incomplete UTF-8 character becomes U+FFFD. The executor's silence timer
        should pass `final=False`. Then an incomplete UTF-8 character or escape
        sequence at the end stays held (at most MAX_ESCAPE_BYTES + 3 bytes) so that a
        pause cannot split it.
        """
        waiting = [
            (stream, state) for stream, state in self._states.items() if state.pending
        ]
        waiting.sort(key=lambda item: item[1].order)
        return [
            piece
            for stream, state in waiting
            for piece in self._flush_stream(stream, state, final)
        ]

    def _state(self, stream: Stream) -> _StreamState:
        if stream not in STREAMS:
            raise ValueError(
                f"invalid stream {stream!r}: use one of {', '.join(STREAMS)}"
            )
        return self._states[stream]

    def _flush_stream(
        self, stream: Stream, state: _StreamState, final: bool
    ) -> list[CapturedText]:
        buffer = state.pending
        if final:
            text = state.decoder.decode(buffer, final=True)
            state.decoder.reset()
            state.pending = b""
            return [CapturedText(stream, text, buffer, state.at)]

        cut, text = self._cut(state.decoder, buffer, 0, len(buffer), progress=False)
        if cut == 0:
            return []
        state.pending = buffer[cut:]
        return [CapturedText(stream, text, buffer[:cut], state.at)]

    def _split_lines(
        self, stream: Stream, state: _StreamState, lines: bytes, now: float
    ) -> list[CapturedText]:
        """Return one piece a line, or several for a long line."""
        raw_lines = lines.split(b"\n")
        raw_lines.pop()
        first_at = state.at
        if max(map(len, raw_lines)) < self._max:
            # Fast path: every line fits, so one decode serves them all. A newline
            # byte is never part of a UTF-8 sequence, so the texts split alike.
            texts = state.decoder.decode(lines).split("\n")
            texts.pop()
            pieces = [
                CapturedText(stream, text + "\n", raw + b"\n", now)
                for text, raw in zip(texts, raw_lines, strict=True)
            ]
            pieces[0] = CapturedText(stream, pieces[0].text, pieces[0].raw, first_at)
            return pieces

        pieces = []
        for index, raw in enumerate(raw_lines):
            at = first_at if index == 0 else now
            pieces += self._split_line(stream, state.decoder, raw + b"\n", at)
        return pieces

    def _split_line(
        self,
        stream: Stream,
        decoder: codecs.IncrementalDecoder,
        line: bytes,
        at: float,
    ) -> list[CapturedText]:
        pieces = []
        start = 0
        while len(line) - start > self._max:
            cut, text = self._cut(decoder, line, start, start + self._max)
            raw = line[start:cut]
            pieces.append(CapturedText(stream, text + CONTINUATION, raw, at, True))
            start = cut
        text = decoder.decode(line[start:])
        pieces.append(CapturedText(stream, text, line[start:], at))
        return pieces

    def _cut_partial(
        self,
        stream: Stream,
        state: _StreamState,
        buffer: bytes,
        carried: int,
        now: float,
    ) -> list[CapturedText]:
        """Cut pieces off a partial line until fewer than max_line_bytes remain.

        `carried` counts the bytes at the front of `buffer` that earlier feeds
        delivered, so that each piece gets the capture time of its first byte.
        """
        pieces = []
        start = 0
        while len(buffer) - start >= self._max:
            at = state.at if start < carried else now
            cut, text = self._cut(state.decoder, buffer, start, start + self._max)
            raw = buffer[start:cut]
            pieces.append(CapturedText(stream, text + CONTINUATION, raw, at, True))
            start = cut
        if start >= carried and start < len(buffer):
            state.at, state.order = now, self._feeds
        state.pending = buffer[start:]
        return pieces

    def _cut(
        self,
        decoder: codecs.IncrementalDecoder,
        buffer: bytes,
        start: int,
        limit: int,
        *,
        progress: bool = True,
    ) -> tuple[int, str]:
        """Return where to end the piece that starts at `start`, and its text.

        The cut is at most `limit`, before any escape sequence that would cross
        it, and before any incomplete UTF-8 character, which the decoder reports
        by holding its bytes. With `progress`, the piece is never empty: an escape
        sequence that starts the piece and crosses `limit` is cut as is.
        """
        cut = _escape_boundary(buffer, start, limit)
        if progress and cut - start < 4:
            cut = limit

        text = decoder.decode(buffer[start:cut])
        incomplete = decoder.getstate()[0]
        if incomplete:
            # Keep those bytes in the buffer, not in the decoder, so that `raw`
            # is exactly the bytes that `text` came from.
            decoder.reset()
            cut -= len(incomplete)
        return cut, text


def _escape_boundary(buffer: bytes, start: int, limit: int) -> int:
    """Return the start of the first escape sequence crossing `limit`, or `limit`."""
    position = buffer.find(b"\x1b", max(start, limit - MAX_ESCAPE_BYTES), limit)
    while position != -1:
        end = _escape_end(buffer, position)
        if end > limit:
            return position
        position = buffer.find(b"\x1b", end, limit)
    return limit


def _escape_end(buffer: bytes, position: int) -> int:
    """Return the end of the escape sequence at `position`.

    A sequence that the end of `buffer` cuts short ends past the buffer. A malformed
    or overlong one is the ESC byte alone.
    """
    stop = min(len(buffer), position + MAX_ESCAPE_BYTES)
    match = _ESCAPE_BYTES.match(buffer, position, stop)
    if match:
        return match.end()
    if len(buffer) - position < MAX_ESCAPE_BYTES and _ESCAPE_PREFIX_BYTES.fullmatch(
        buffer, position
    ):
        return len(buffer) + 1
    return position + 1


def strip_control(text: str) -> str:
    """Return the plain text that a terminal would show for `text`.

    Escape sequences and control characters other than newline and tab are
    removed. In each line, a carriage return moves back to the first column, so
    later text overwrites earlier text ("a\\rb\\rc" shows "c"). An erase-line
    sequence (ESC [ K, ESC [ 0 K or ESC [ 2 K) right after a carriage return clears
    the line. Other cursor movement is not modelled. Applied to one log chunk, a
    carriage return cannot overwrite text of an earlier chunk.
    """
    return "\n".join(_render_line(line) for line in text.split("\n"))


def _render_line(line: str) -> str:
    if "\r" not in line:
        return _visible(line)
    screen = ""
    for segment in line.split("\r"):
        if _ERASE_LINE_TEXT.match(segment):
            screen = ""
        shown = _visible(segment)
        screen = shown + screen[len(shown) :]
    return screen


def _visible(segment: str) -> str:
    return _CONTROL_TEXT.sub("", _ESCAPE_TEXT.sub("", segment))


class ChunkBatcher:
    """Group pieces into batches of one stream and at most `max_batch_bytes` bytes.

    The size of a piece is the larger of its raw size and the UTF-8 size of its
    text, so both fields of a batch keep to the bound. A piece bigger than the
    bound on its own makes a batch alone. Time-based flushing is the caller's
    job: call `drain()` when `pending_since` is older than the flush interval.
    """

    def __init__(self, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> None:
        if max_batch_bytes < 1:
            raise ValueError(
                f"invalid max_batch_bytes {max_batch_bytes!r}: use at least 1 byte"
            )
        self._max = max_batch_bytes
        self._pieces: list[CapturedText] = []
        self._size = 0

    @property
    def pending_since(self) -> float | None:
        """Capture time of the oldest piece not yet in a batch, None when empty."""
        return self._pieces[0].at if self._pieces else None

    def add(self, piece: CapturedText) -> list[Batch]:
        """Add a piece and return the batches that are complete because of it.

        A batch is complete when the next piece belongs to another stream or would
        not fit, or when the batch has reached `max_batch_bytes`.
        """
        batches = []
        size = max(len(piece.raw), len(piece.text.encode("utf-8")))
        if self._pieces and (
            piece.stream != self._pieces[0].stream or self._size + size > self._max
        ):
            batches.append(self._take())

        self._pieces.append(piece)
        self._size += size
        if self._size >= self._max:
            batches.append(self._take())
        return batches

    def drain(self) -> list[Batch]:
        """Return the pending pieces as a batch, or nothing when none are pending."""
        return [self._take()] if self._pieces else []

    def _take(self) -> Batch:
        pieces, self._pieces, self._size = self._pieces, [], 0
        return Batch(
            stream=pieces[0].stream,
            text="".join(piece.text for piece in pieces),
            raw=b"".join(piece.raw for piece in pieces),
            first_at=pieces[0].at,
        )
