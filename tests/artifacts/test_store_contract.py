"""The contract of the artifact store port, run against every backend."""

import hashlib
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from libs.artifacts import (
    ArtifactNotFound,
    ArtifactStore,
    InvalidArtifactKey,
    RangeNotSatisfiable,
    remove_older_than,
)

CONTENT = bytes(range(256)) * 40  # 10,240 bytes with a recognisable pattern


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "artifact.tar.gz"
    path.write_bytes(CONTENT)
    return path


async def read_range(
    store: ArtifactStore, key: str, start: int, end: int | None
) -> bytes:
    return b"".join([chunk async for chunk in store.open_range(key, start, end)])


async def test_put_then_stat(store: ArtifactStore, source: Path) -> None:
    stored = await store.put("jobs/j1/dist.tar.gz", str(source), "application/gzip")
    info = await store.stat("jobs/j1/dist.tar.gz")

    assert stored.key == "jobs/j1/dist.tar.gz"
    assert stored.size == len(CONTENT)
    assert stored.sha256 == hashlib.sha256(CONTENT).hexdigest()
    assert stored.url.endswith("jobs/j1/dist.tar.gz")
    assert info.size == len(CONTENT)
    assert info.modified.tzinfo is not None
    assert abs(datetime.now(UTC) - info.modified) < timedelta(minutes=5)


async def test_put_replaces_object(store: ArtifactStore, tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.write_bytes(b"first version")
    second = tmp_path / "second"
    second.write_bytes(b"second")

    await store.put("a/b", str(first), "text/plain")
    await store.put("a/b", str(second), "text/plain")

    assert await read_range(store, "a/b", 0, None) == b"second"


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, None, CONTENT),
        (0, 99, CONTENT[:100]),
        (5000, 5999, CONTENT[5000:6000]),
        (len(CONTENT) - 100, None, CONTENT[-100:]),
        (len(CONTENT) - 10, len(CONTENT) + 500, CONTENT[-10:]),
        (7, 7, CONTENT[7:8]),
    ],
    ids=["whole", "start", "middle", "suffix", "end-past-size", "one-byte"],
)
async def test_open_range(
    store: ArtifactStore, source: Path, start: int, end: int | None, expected: bytes
) -> None:
    await store.put("ranges/obj", str(source), "application/octet-stream")

    assert await read_range(store, "ranges/obj", start, end) == expected


async def test_range_past_end_rejected(store: ArtifactStore, source: Path) -> None:
    await store.put("ranges/obj", str(source), "application/octet-stream")

    with pytest.raises(RangeNotSatisfiable, match="10240 bytes"):
        await read_range(store, "ranges/obj", len(CONTENT), None)


async def test_inverted_range_rejected(store: ArtifactStore) -> None:
    with pytest.raises(ValueError, match="not below start"):
        store.open_range("ranges/obj", 10, 5)


async def test_empty_object(store: ArtifactStore, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")

    stored = await store.put("empty", str(empty), "application/zip")

    assert stored.size == 0
    assert await read_range(store, "empty", 0, None) == b""
    with pytest.raises(RangeNotSatisfiable):
        await read_range(store, "empty", 0, 10)


async def test_missing_key(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound, match="'no/such/key'"):
        await store.stat("no/such/key")
    with pytest.raises(ArtifactNotFound):
        await read_range(store, "no/such/key", 0, None)
    await store.delete("no/such/key")


async def test_delete_and_list(store: ArtifactStore, source: Path) -> None:
    for key in ["jobs/j2/b.zip", "jobs/j1/a.zip", "jobs/j10/c.zip", "other/x"]:
        await store.put(key, str(source), "application/zip")

    await store.delete("jobs/j2/b.zip")

    assert await store.list("jobs/") == ["jobs/j1/a.zip", "jobs/j10/c.zip"]
    assert await store.list("jobs/j1") == ["jobs/j1/a.zip", "jobs/j10/c.zip"]
    assert await store.list("jobs/j1/") == ["jobs/j1/a.zip"]
    assert len(await store.list()) == 3
    with pytest.raises(ArtifactNotFound):
        await store.stat("jobs/j2/b.zip")


@pytest.mark.parametrize(
    "key",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "jobs/../../x",
        "jobs/./x",
        "a\\b",
        "nul\0byte",
        "",
        "trailing/",
        "double//slash",
        "k" * 1025,
    ],
)
async def test_unsafe_key_rejected(
    store: ArtifactStore, source: Path, key: str
) -> None:
    with pytest.raises(InvalidArtifactKey) as caught:
        await store.put(key, str(source), "text/plain")

    assert caught.value.key == key
    assert repr(key) in str(caught.value)
    with pytest.raises(InvalidArtifactKey):
        await store.stat(key)
    with pytest.raises(InvalidArtifactKey):
        await store.delete(key)
    with pytest.raises(InvalidArtifactKey):
        store.open_range(key, 0)
    assert await store.list() == []


async def test_unsafe_prefix_rejected(store: ArtifactStore) -> None:
    with pytest.raises(InvalidArtifactKey, match=re.escape("'../'")):
        await store.list("../")


async def test_retention_by_cutoff(store: ArtifactStore, source: Path) -> None:
    for key in ["jobs/j1/a.zip", "jobs/j2/b.zip", "keep/c.zip"]:
        await store.put(key, str(source), "application/zip")
    past = datetime.now(UTC) - timedelta(hours=1)
    future = datetime.now(UTC) + timedelta(hours=1)

    assert await remove_older_than(store, "jobs/", past) == []
    removed = await remove_older_than(store, "jobs/", future)

    assert removed == ["jobs/j1/a.zip", "jobs/j2/b.zip"]
    assert await store.list() == ["keep/c.zip"]


async def test_retention_needs_aware_cutoff(store: ArtifactStore) -> None:
    with pytest.raises(ValueError, match="timezone"):
        await remove_older_than(store, "", datetime.now())


async def test_large_object_streams_in_chunks(
    store: ArtifactStore, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "large"
    path.write_bytes(data)
    await store.put("large", str(path), "application/octet-stream")

    chunks = [chunk async for chunk in store.open_range("large", 1, None)]

    assert len(chunks) > 1
    assert b"".join(chunks) == data[1:]
