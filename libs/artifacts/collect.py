"""Selecting artifact files from the tar stream of a step's workspace.

The executor reads the workspace with Docker's `GET /containers/{id}/archive`, which
returns an uncompressed tar whose top-level entry is `workspace/`. This module reads
that stream once, front to back, keeps the entries that the step's glob patterns
select and copies their content into a private staging directory. Staged files are
named by a counter, never by member names, so a hostile name cannot place a file
anywhere. The result is ready for `write_archive`.

Safety rules, each skipped entry noted in `Collected.warnings`:
- member names that are absolute, contain NUL or `..`, or lie outside `root`.
- symbolic links that are absolute or resolve outside the workspace, also through
  other selected links. Links that stay inside are stored as links.
- hard links whose target is outside the workspace or not selected. A hard link to
  a selected file is stored as a copy of that file.
- device files, FIFOs and other special files.
"""

import logging
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO

from .archive import (
    ArchiveEntry,
    ArchiveFormat,
    EntryKind,
    WrittenArchive,
    write_archive,
)
from .errors import ArtifactTooLarge, InvalidArchive
from .matcher import Selection
from .paths import resolve_link, split_relative

log = logging.getLogger(__name__)

_COPY_CHUNK = 1024 * 1024
_DEFAULT_DIRECTORY_MODE = 0o755
# Beyond this many warnings only a count is kept, so a workspace full of special
# files cannot flood the step log.
MAX_WARNINGS = 100


@dataclass
class Collected:
    """Entries selected from a workspace tar, staged on local disk.

    Use it as a context manager, or call `close`, to remove the staged files.
    """

    entries: list[ArchiveEntry]
    """Selected entries, sorted by path so that parents come before children."""
    warnings: list[str]
    """Skipped entries and patterns that matched nothing, one sentence each."""
    unmatched_patterns: list[str]
    total_bytes: int
    """Sum of the sizes of the selected files, as counted against `max_bytes`."""
    staging_dir: str

    def write_archive(self, fmt: ArchiveFormat) -> WrittenArchive:
        """Write the entries to a new archive file inside the staging directory."""
        fd, path = tempfile.mkstemp(
            prefix="artifact-", suffix="." + fmt, dir=self.staging_dir
        )
        os.close(fd)
        os.unlink(path)
        return write_archive(self.entries, fmt, path)

    def close(self) -> None:
        """Remove the staging directory and every archive written into it."""
        shutil.rmtree(self.staging_dir, ignore_errors=True)

    def __enter__(self) -> "Collected":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def collect_from_tar(
    fileobj: IO[bytes],
    patterns: Iterable[str],
    *,
    root: str = "workspace",
    max_bytes: int,
    staging_parent: str | None = None,
) -> Collected:
    """Select the entries of a workspace tar stream that `patterns` name.

    `fileobj` is read once in tar streaming mode, so a socket or pipe works. Member
    names must start with `root/`, or pass `root=""` for a tar without a top-level
    directory. The staging directory is created under `staging_parent` (default:
    the system temporary directory).

    Raises `InvalidPattern` before reading anything, `ArtifactTooLarge` when the
    selected files add up to more than `max_bytes`, and `InvalidArchive` for a
    stream that is not a readable tar. Nothing is left on disk when it raises.
    This call blocks, so async code runs it with `asyncio.to_thread`.
    """
    collector = _Collector(Selection(patterns), root, max_bytes)
    staging_dir = tempfile.mkdtemp(prefix="stasis-artifacts-", dir=staging_parent)
    try:
        collector.read(fileobj, staging_dir)
        entries = collector.finish()
    except BaseException:
        shutil.rmtree(staging_dir, ignore_errors=True)
        raise
    log.info(
        "collected %d artifact entries (%d bytes) with %d warnings",
        len(entries),
        collector.total_bytes,
        len(collector.warnings),
    )
    return Collected(
        entries=entries,
        warnings=collector.warnings,
        unmatched_patterns=collector.selection.unmatched_patterns(),
        total_bytes=collector.total_bytes,
        staging_dir=staging_dir,
    )


@dataclass
class _Collector:
    selection: Selection
    root: str
    max_bytes: int
    total_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    _dropped_warnings: int = 0
    _directories: dict[str, ArchiveEntry] = field(default_factory=dict)
    _files: dict[str, ArchiveEntry] = field(default_factory=dict)
    _links: dict[str, ArchiveEntry] = field(default_factory=dict)

    def read(self, fileobj: IO[bytes], staging_dir: str) -> None:
        try:
            with tarfile.open(fileobj=fileobj, mode="r|", encoding="utf-8") as tar:
                for member in tar:
                    self._take(tar, member, staging_dir)
        except tarfile.TarError as exc:
            raise InvalidArchive(
                f"the workspace tar stream could not be read: {exc}"
            ) from exc

    def finish(self) -> list[ArchiveEntry]:
        kept_links = self._safe_links()
        kept_paths = [*self._files, *kept_links]
        now = time.time()
        directories = [
            self._directories.get(path)
            or ArchiveEntry(path, "directory", _DEFAULT_DIRECTORY_MODE, now)
            for path in self.selection.directories(kept_paths)
        ]
        for pattern in self.selection.unmatched_patterns():
            self._warn(f"pattern {pattern!r} matched nothing in the workspace")
        if self._dropped_warnings:
            self.warnings.append(f"{self._dropped_warnings} more warnings not shown")
        entries = [*directories, *self._files.values(), *kept_links.values()]
        return sorted(entries, key=lambda entry: entry.path)

    def _take(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, staging: str
    ) -> None:
        path = self._relative_path(member.name)
        if path is None:
            return
        if member.isdir():
            self.selection.offer(path, is_dir=True)
            self._directories[path] = _entry(member, path, "directory")
        elif not self.selection.offer(path, is_dir=False):
            return
        elif member.isreg():
            self._stage_file(tar, member, path, staging)
        elif member.issym():
            self._links[path] = _entry(member, path, "symlink")
        elif member.islnk():
            self._take_hard_link(member, path)
        else:
            kind = _special_kind(member)
            self._warn(f"{kind} {path!r} skipped: only files, directories and links")

    def _relative_path(self, name: str, *, warn: bool = True) -> str | None:
        """Return `name` relative to the root, or None (with a warning if unsafe)."""
        segments = split_relative(name)
        if segments is None:
            problem = "it is absolute, or contains '..' or NUL"
        elif self.root and segments[:1] != [self.root]:
            problem = f"it is outside {self.root + '/'!r}"
        elif not _is_utf8(name):
            problem = "its name is not valid UTF-8"
        else:
            return "/".join(segments[1:] if self.root else segments) or None
        if warn:
            self._warn(f"member {name!r} skipped: {problem}")
        return None

    def _stage_file(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, staging: str
    ) -> None:
        self._count_bytes(member.size, path)
        source = tar.extractfile(member)
        if source is None:
            raise InvalidArchive(f"tar member {member.name!r} has no readable content")
        staged = os.path.join(staging, f"{len(self._files):08d}")
        # O_EXCL and a counter name: the staged path never comes from the tar.
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with source, os.fdopen(fd, "wb") as target:
            shutil.copyfileobj(source, target, _COPY_CHUNK)
        self._files[path] = _entry(member, path, "file", source=staged)

    def _take_hard_link(self, member: tarfile.TarInfo, path: str) -> None:
        target = self._relative_path(member.linkname, warn=False)
        if target is None:
            self._warn(f"hard link {path!r} skipped: it points outside the workspace")
            return
        original = self._files.get(target)
        if original is None:
            self._warn(
                f"hard link {path!r} skipped: its target {target!r} is not selected, "
                "so add the target to the artifact patterns to keep both"
            )
            return
        self._count_bytes(original.size, path)
        self._files[path] = _entry(member, path, "file", original.source, original.size)

    def _count_bytes(self, size: int, path: str) -> None:
        self.total_bytes += size
        if self.total_bytes > self.max_bytes:
            raise ArtifactTooLarge(self.max_bytes, self.total_bytes, path)

    def _safe_links(self) -> dict[str, ArchiveEntry]:
        targets = {path: entry.link_target for path, entry in self._links.items()}
        kept: dict[str, ArchiveEntry] = {}
        for path, entry in self._links.items():
            if resolve_link(path, entry.link_target, targets) is None:
                self._warn(
                    f"symbolic link {path!r} -> {entry.link_target!r} skipped: "
                    "its target is outside the workspace"
                )
            else:
                kept[path] = entry
        return kept

    def _warn(self, message: str) -> None:
        if len(self.warnings) >= MAX_WARNINGS:
            self._dropped_warnings += 1
            return
        log.warning("%s", message)
        self.warnings.append(message)


def _entry(
    member: tarfile.TarInfo,
    path: str,
    kind: EntryKind,
    source: str | None = None,
    size: int | None = None,
) -> ArchiveEntry:
    return ArchiveEntry(
        path=path,
        kind=kind,
        mode=member.mode & 0o777,
        mtime=float(member.mtime),
        size=member.size if size is None else size,
        source=source,
        link_target=member.linkname if kind == "symlink" else "",
    )


def _is_utf8(name: str) -> bool:
    # tarfile decodes with errors="surrogateescape", so undecodable bytes come
    # back as lone surrogates that cannot be encoded again.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _special_kind(member: tarfile.TarInfo) -> str:
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    return "special file"
