"""Builds tar streams shaped like Docker's `GET /containers/{id}/archive` output."""

import io
import tarfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    """One entry of a test tar, where `kind` is a tarfile type constant."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""


def build_tar(members: list[Member]) -> bytes:
    """Return an uncompressed PAX tar with the members in the given order.

    Docker writes directory names with a trailing `/`, owner root and PAX headers
    for names that ustar cannot hold, as done here.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.kind
            info.mode = member.mode
            info.mtime = 1_700_000_000
            info.linkname = member.linkname
            if member.kind == tarfile.REGTYPE:
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


class _UnseekableReader(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._source = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "memoryview | bytearray") -> int:  # type: ignore[override]
        chunk = self._source.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def stream_only(data: bytes) -> io.BufferedReader:
    """Return a reader without seek, like the HTTP body of Docker's archive call."""
    return io.BufferedReader(_UnseekableReader(data))


def directory(name: str, mode: int = 0o755) -> Member:
    return Member(name.rstrip("/") + "/", tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> Member:
    return Member(name, tarfile.SYMTYPE, mode=0o777, linkname=target)
