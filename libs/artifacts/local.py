"""The artifact store backend that keeps objects as files under a root directory.

A write goes to a temporary file in `<root>/.stasis-partial/` and is moved into
place with `os.replace`, so readers never see half an object. Every path is
resolved, symbolic links included, and checked to stay under the root before it
is read or written. File I/O runs in worker threads.
"""

import asyncio
import hashlib
import os
import stat
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

from .errors import ArtifactNotFound, InvalidArtifactKey
from .store import ArtifactStore, ObjectInfo, StoredObject, check_range

PARTIAL_DIR = ".stasis-partial"
"""Top-level directory for writes in progress, which keys may not start with."""
_CHUNK = 1024 * 1024


class LocalArtifactStore(ArtifactStore):
    """Stores artifacts as plain files under `root`, one file per key."""

    def __init__(self, root: str) -> None:
        os.makedirs(root, exist_ok=True)
        self.root = os.path.realpath(root)

    async def _put(self, key: str, source_path: str, content_type: str) -> StoredObject:
        path = self._path(key)
        size, digest = await asyncio.to_thread(self._copy_in, source_path, path)
        return StoredObject(key, size, digest, Path(path).as_uri())

    async def _open_range(
        self, key: str, start: int, end: int | None
    ) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ArtifactNotFound(key) from exc
        try:
            size = os.fstat(handle.fileno()).st_size
            check_range(key, start, end, size)
            remaining = (size if end is None else min(end + 1, size)) - start
            await asyncio.to_thread(handle.seek, start)
            while remaining > 0:
                chunk = await asyncio.to_thread(handle.read, min(_CHUNK, remaining))
                if not chunk:
                    break
                remaining -= len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def _stat(self, key: str) -> ObjectInfo:
        info = await asyncio.to_thread(_file_info, key, self._path(key))
        if info is None:
            raise ArtifactNotFound(key)
        return info

    async def _delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete_sync, self._path(key))

    async def _list_info(self, prefix: str) -> list[ObjectInfo]:
        return await asyncio.to_thread(self._list_sync, prefix)

    def _path(self, key: str) -> str:
        if key.split("/", 1)[0] == PARTIAL_DIR:
            raise InvalidArtifactKey(key, f"{PARTIAL_DIR!r} is reserved by the store")
        path = os.path.realpath(os.path.join(self.root, key))
        if not path.startswith(self.root + os.sep):
            raise InvalidArtifactKey(
                key, f"it resolves to {path!r}, outside the store root {self.root!r}"
            )
        return path

    def _copy_in(self, source_path: str, path: str) -> tuple[int, str]:
        partial_dir = os.path.join(self.root, PARTIAL_DIR)
        os.makedirs(partial_dir, exist_ok=True)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=partial_dir)
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as target, open(source_path, "rb") as source:
                while chunk := source.read(_CHUNK):
                    target.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                target.flush()
                os.fsync(target.fileno())
            os.chmod(partial, 0o644)
            os.replace(partial, path)
        except BaseException:
            os.unlink(partial)
            raise
        return size, digest.hexdigest()

    def _delete_sync(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        # Remove directories that the delete left empty, up to the root.
        parent = os.path.dirname(path)
        while parent != self.root:
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)

    def _list_sync(self, prefix: str) -> list[ObjectInfo]:
        # Walk only the directory that the prefix's complete segments name.
        start = os.path.join(self.root, *prefix.split("/")[:-1])
        found: list[ObjectInfo] = []
        for directory, subdirectories, files in os.walk(start):
            if directory == self.root and PARTIAL_DIR in subdirectories:
                subdirectories.remove(PARTIAL_DIR)
            relative = os.path.relpath(directory, self.root)
            for name in files:
                key = name if relative == "." else f"{relative}/{name}"
                if not key.startswith(prefix):
                    continue
                info = _file_info(key, os.path.join(directory, name))
                if info is not None:
                    found.append(info)
        return found


def _file_info(key: str, path: str) -> ObjectInfo | None:
    """Return the info of a regular file, or None for anything else or nothing."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return ObjectInfo(key, info.st_size, datetime.fromtimestamp(info.st_mtime, UTC))
