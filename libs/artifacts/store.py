"""The artifact storage port: one interface that every storage backend implements.

Callers use the public methods of `ArtifactStore`. Those validate every key and
range before a backend sees it, then call the backend's underscore methods, so no
backend can be handed a key such as `../../etc/passwd`.
"""

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

from .errors import InvalidArtifactKey, RangeNotSatisfiable

# S3 limits object keys to 1024 bytes of UTF-8. The local store keeps the same
# limit so a key valid on one backend is valid on the other.
MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class StoredObject:
    """The result of `ArtifactStore.put`."""

    key: str
    size: int
    """Size in bytes."""
    sha256: str
    """Hex SHA-256 of the stored bytes."""
    url: str
    """Where the object lives: `file://...` or `s3://bucket/key`."""


@dataclass(frozen=True)
class ObjectInfo:
    """Metadata of one stored object."""

    key: str
    size: int
    """Size in bytes."""
    modified: datetime
    """Time of the last write, timezone-aware (UTC)."""
    content_type: str | None = None
    """The content type given to `put`, where the backend keeps it."""
    sha256: str | None = None
    """Hex SHA-256 given at `put`, where the backend keeps it."""


def validate_key(key: str) -> None:
    """Raise `InvalidArtifactKey` unless `key` is a safe relative object key.

    A key is one or more non-empty segments separated by `/`, with no `.` or `..`
    segment, no leading or trailing `/`, no NUL, no backslash and at most
    `MAX_KEY_BYTES` bytes of UTF-8.
    """
    if not key:
        raise InvalidArtifactKey(key, "it is empty")
    _validate_common(key, key)
    if key.endswith("/") or "" in key.split("/"):
        raise InvalidArtifactKey(key, "empty segments ('//' or a trailing '/')")


def validate_prefix(prefix: str) -> None:
    """Raise `InvalidArtifactKey` unless `prefix` can start a valid key.

    An empty prefix is valid and a trailing `/` is allowed.
    """
    if prefix:
        _validate_common(prefix, prefix.removesuffix("/"))


def _validate_common(key: str, body: str) -> None:
    if "\0" in key:
        raise InvalidArtifactKey(key, "it contains NUL")
    if "\\" in key:
        raise InvalidArtifactKey(
            key, "it contains a backslash, so use '/' between segments"
        )
    if key.startswith("/"):
        raise InvalidArtifactKey(key, "it starts with '/', but keys are relative")
    if {".", ".."} & set(body.split("/")):
        raise InvalidArtifactKey(key, "'.' and '..' segments are not allowed")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArtifactKey(key, "it is not valid UTF-8") from exc
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidArtifactKey(key, f"longer than {MAX_KEY_BYTES} bytes of UTF-8")


def check_range(key: str, start: int, end: int | None, size: int) -> None:
    """Raise `RangeNotSatisfiable` unless the range fits an object of `size` bytes.

    A range is satisfiable when `start` is below `size`. A full read (`start` 0,
    `end` None) is always satisfiable, even for an empty object.
    """
    if start == 0 and end is None:
        return
    if start >= size:
        raise RangeNotSatisfiable(key, start, end, size)


class ArtifactStore(abc.ABC):
    """Stores artifact archives under string keys.

    Use it as an async context manager, or call `close`, to release connections.
    """

    async def put(self, key: str, source_path: str, content_type: str) -> StoredObject:
        """Store the file at `source_path` under `key`, replacing any object there."""
        validate_key(key)
        return await self._put(key, source_path, content_type)

    def open_range(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Stream bytes `start` to `end` of the object, both offsets inclusive.

        Offsets follow the HTTP Range header: `end` None reads to the end, and an
        `end` past the object is cut to its last byte. For a suffix range of the
        last N bytes, `stat` the object first and start at `size - N`. Raises
        `ArtifactNotFound` or `RangeNotSatisfiable` when iteration starts.
        """
        validate_key(key)
        if start < 0 or (end is not None and end < start):
            raise ValueError(
                f"invalid byte range {start}-{end} for {key!r}: start must be "
                "0 or more and end, if given, not below start"
            )
        return self._open_range(key, start, end)

    async def stat(self, key: str) -> ObjectInfo:
        """Return size, modification time and what else the backend keeps."""
        validate_key(key)
        return await self._stat(key)

    async def delete(self, key: str) -> None:
        """Delete the object. Deleting a missing key is not an error."""
        validate_key(key)
        await self._delete(key)

    async def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        """Return key, size and modification time of every object under `prefix`.

        `prefix` is a plain string prefix, as in S3. Results are sorted by key.
        """
        validate_prefix(prefix)
        return sorted(await self._list_info(prefix), key=lambda info: info.key)

    async def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release the backend's connections. The default does nothing."""

    async def __aenter__(self) -> "ArtifactStore":
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def _put(self, key: str, source_path: str, content_type: str) -> StoredObject:
        """Store a file under an already validated key."""

    @abc.abstractmethod
    def _open_range(
        self, key: str, start: int, end: int | None
    ) -> AsyncIterator[bytes]:
        """Stream an inclusive byte range of an already validated key."""

    @abc.abstractmethod
    async def _stat(self, key: str) -> ObjectInfo:
        """Return metadata of an already validated key."""

    @abc.abstractmethod
    async def _delete(self, key: str) -> None:
        """Delete an already validated key."""

    @abc.abstractmethod
    async def _list_info(self, prefix: str) -> list[ObjectInfo]:
        """Return metadata of every object under a validated prefix, in any order."""

    # Defined last: inside the class body the name `list` means this method.
    async def list(self, prefix: str = "") -> list[str]:
        """Return the keys of every object under `prefix`, sorted."""
        return [info.key for info in await self.list_info(prefix)]
