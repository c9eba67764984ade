"""Log files on disk, appended exactly once per chunk across crashes.

Each step's log is `<root>/<job_id>/<run_id>/<step>.log`. It holds the output
bytes as the step wrote them, invalid UTF-8 included, with no continuation
marks, and the executor's notes as UTF-8 lines. Beside it,
`<step>.log.pos` records the stream sequence of the last chunk written and the
file size after it. Writing a chunk appends and fsyncs the log, then replaces
the position file; a crash between the two leaves extra bytes that the next
write cuts off before it appends again, so a redelivered chunk is written once.

A chunk whose stream sequence is not above the file's recorded one is skipped,
so the chunks of one file must arrive in stream order: a chunk that arrives
after a later one of the same file is lost.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from libs.events import LogChunk
from libs.events.subjects import check_token
from services.executor.logs import chunk_bytes


@dataclass
class _Position:
    seq: int
    size: int


class LogFileStore:
    """Appends log chunks to per-step files under `root`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._positions: dict[Path, _Position] = {}

    def path_of(self, job_id: str, run_id: str, step: str) -> Path:
        """Return the log file of one step of one run."""
        for value, what in ((job_id, "job id"), (run_id, "run id"), (step, "step")):
            check_token(value, what)
        return self.root / job_id / run_id / f"{step}.log"

    def write(self, entries: list[tuple[int, LogChunk]]) -> None:
        """Append (stream seq, chunk) pairs of one step, skipping those written."""
        first = entries[0][1]
        path = self.path_of(first.job_id, first.run_id, first.step)
        position = self._position(path)
        chunks = [chunk for seq, chunk in entries if seq > position.seq]
        if not chunks:
            return
        stream_seq = entries[-1][0]
        path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(chunk_bytes(chunk) for chunk in chunks)
        with open(path, "ab") as log_file:
            if log_file.tell() != position.size:
                log_file.truncate(position.size)
                log_file.seek(position.size)
            log_file.write(data)
            log_file.flush()
            os.fsync(log_file.fileno())
            size = log_file.tell()
        self._save_position(path, _Position(stream_seq, size))

    def _position(self, path: Path) -> _Position:
        cached = self._positions.get(path)
        if cached is not None:
            return cached
        try:
            seq_text, size_text = (
                (path.parent / (path.name + ".pos")).read_text().split()
            )
            position = _Position(int(seq_text), int(size_text))
        except (OSError, ValueError):
            position = _Position(0, 0)
        self._positions[path] = position
        return position

    def _save_position(self, path: Path, position: _Position) -> None:
        target = path.parent / (path.name + ".pos")
        temporary = target.with_suffix(".pos.tmp")
        # fsync before the rename so that a power loss cannot leave an empty
        # position file, which would read as "nothing written" and truncate the log.
        with open(temporary, "w") as position_file:
            position_file.write(f"{position.seq} {position.size}\n")
            position_file.flush()
            os.fsync(position_file.fileno())
        os.replace(temporary, target)
        self._positions[path] = position
