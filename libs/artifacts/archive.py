"""Writing selected workspace entries to tar.gz and zip archives.

Both writers stream to the destination file, never building the archive in memory,
and compute the archive's size and SHA-256 from the bytes as they are written.
They keep permission bits (so the executable bit survives), empty directories,
symbolic links and UTF-8 names.
"""

import contextlib
import hashlib
import os
import shutil
import stat
import tarfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, BinaryIO, Literal, cast

ArchiveFormat = Literal["tar.gz", "zip"]
EntryKind = Literal["file", "directory", "symlink"]

CONTENT_TYPES: dict[ArchiveFormat, str] = {
    "tar.gz": "application/gzip",
    "zip": "application/zip",
}
_COPY_CHUNK = 1024 * 1024
# DOS timestamps in zip headers cover the years 1980 to 2107 only.
_ZIP_MIN_TIME = (1980, 1, 1, 0, 0, 0)
_ZIP_MAX_TIME = (2107, 12, 31, 23, 59, 58)
_ZIP_UNIX_SYSTEM = 3
_MSDOS_DIRECTORY = 0x10


@dataclass(frozen=True)
class ArchiveEntry:
    """One file, directory or symbolic link to put into an artifact archive."""

    path: str
    """Path relative to the workspace, with `/` between directories."""
    kind: EntryKind
    mode: int
    """Permission bits, 0o777 at most, because setuid, setgid and sticky are dropped."""
    mtime: float
    size: int = 0
    source: str | None = None
    """Local file with the content of a `file` entry."""
    link_target: str = ""
    """Target of a `symlink` entry, as stored in the link."""


@dataclass(frozen=True)
class WrittenArchive:
    """An archive file written by `write_archive`."""

    path: str
    format: ArchiveFormat
    size: int
    """Size of the archive file in bytes."""
    sha256: str
    """Hex SHA-256 of the archive file."""
    content_type: str
    entry_count: int


class _HashingWriter:
    """A write-only file object that hashes and counts the bytes it passes on.

    It has no `seek` or `tell` on purpose: `zipfile` then writes sizes in data
    descriptors after each member instead of seeking back to patch headers, so the
    hash of the bytes written equals the hash of the final file.
    """

    def __init__(self, target: BinaryIO) -> None:
        self._target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._target.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._target.flush()


def write_archive(
    entries: Iterable[ArchiveEntry], fmt: ArchiveFormat, dest_path: str
) -> WrittenArchive:
    """Write `entries` to a new archive at `dest_path` in the format `fmt`.

    The file is removed again when writing fails.
    """
    if fmt not in CONTENT_TYPES:
        raise ValueError(f"unknown archive format {fmt!r}: use 'tar.gz' or 'zip'")
    writer = _write_tar_gz if fmt == "tar.gz" else _write_zip
    entries = list(entries)
    try:
        with open(dest_path, "xb") as raw:
            hashing = _HashingWriter(raw)
            writer(entries, hashing)
            raw.flush()
            os.fsync(raw.fileno())
    except BaseException:
        _remove_quietly(dest_path)
        raise
    return WrittenArchive(
        path=dest_path,
        format=fmt,
        size=hashing.size,
        sha256=hashing.digest.hexdigest(),
        content_type=CONTENT_TYPES[fmt],
        entry_count=len(entries),
    )


def _write_tar_gz(entries: list[ArchiveEntry], out: _HashingWriter) -> None:
    # PAX headers carry names of any length in UTF-8.
    with tarfile.open(
        fileobj=cast(IO[bytes], out),
        mode="w|gz",
        format=tarfile.PAX_FORMAT,
        encoding="utf-8",
    ) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.path)
            info.mode = entry.mode & 0o777
            info.mtime = int(entry.mtime)
            if entry.kind == "directory":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.link_target
                tar.addfile(info)
            else:
                info.size = entry.size
                with open(_source_of(entry), "rb") as source:
                    tar.addfile(info, source)


def _write_zip(entries: list[ArchiveEntry], out: _HashingWriter) -> None:
    # `zipfile` sets flag bit 11 (UTF-8 names) on every entry with a non-ASCII name.
    target = cast(IO[bytes], out)
    with zipfile.ZipFile(target, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:
        for entry in entries:
            if entry.kind == "directory":
                info = _zip_info(entry.path + "/", entry, stat.S_IFDIR)
                info.external_attr |= _MSDOS_DIRECTORY
                info.file_size = info.compress_size = info.CRC = 0
                archive.mkdir(info)
            elif entry.kind == "symlink":
                # Info-ZIP convention: a link is an entry with S_IFLNK in the
                # mode bits whose content is the link target.
                info = _zip_info(entry.path, entry, stat.S_IFLNK)
                info.compress_type = zipfile.ZIP_STORED
                archive.writestr(info, entry.link_target.encode("utf-8"))
            else:
                info = _zip_info(entry.path, entry, stat.S_IFREG)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.file_size = entry.size
                with (
                    open(_source_of(entry), "rb") as source,
                    archive.open(info, "w") as member,
                ):
                    shutil.copyfileobj(source, member, _COPY_CHUNK)


def _zip_info(name: str, entry: ArchiveEntry, file_type: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, _zip_time(entry.mtime))
    info.create_system = _ZIP_UNIX_SYSTEM
    mode = 0o777 if file_type == stat.S_IFLNK else entry.mode & 0o777
    info.external_attr = (file_type | mode) << 16
    return info


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    stamp = time.localtime(mtime)[:6]
    return max(_ZIP_MIN_TIME, min(_ZIP_MAX_TIME, stamp))


def _source_of(entry: ArchiveEntry) -> str:
    if entry.source is None:
        raise ValueError(f"file entry {entry.path!r} has no source file to read")
    return entry.source


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
