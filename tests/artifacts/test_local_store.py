"""Behaviour specific to the local backend and to `open_store`."""

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from libs.artifacts import (
    InvalidArtifactKey,
    InvalidStoreConfig,
    LocalArtifactStore,
    S3ArtifactStore,
    open_store,
    remove_older_than,
)


async def test_symlink_in_root_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "store"
    outside = tmp_path / "outside"
    outside.mkdir()
    store = LocalArtifactStore(str(root))
    (root / "jobs").symlink_to(outside)
    source = tmp_path / "src"
    source.write_bytes(b"data")

    with pytest.raises(InvalidArtifactKey, match="outside the store root"):
        await store.put("jobs/a.zip", str(source), "application/zip")

    assert list(outside.iterdir()) == []


async def test_partial_directory_reserved(tmp_path: Path) -> None:
    store = LocalArtifactStore(str(tmp_path / "store"))
    source = tmp_path / "src"
    source.write_bytes(b"data")

    with pytest.raises(InvalidArtifactKey, match="reserved"):
        await store.put(".stasis-partial/x", str(source), "text/plain")

    await store.put("a", str(source), "text/plain")
    assert await store.list() == ["a"]


async def test_delete_removes_empty_directories(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalArtifactStore(str(root))
    source = tmp_path / "src"
    source.write_bytes(b"data")
    await store.put("jobs/j1/steps/a.zip", str(source), "application/zip")

    await store.delete("jobs/j1/steps/a.zip")

    assert sorted(os.listdir(root)) == [".stasis-partial"]


async def test_retention_keeps_recent(tmp_path: Path) -> None:
    store = LocalArtifactStore(str(tmp_path / "store"))
    source = tmp_path / "src"
    source.write_bytes(b"data")
    await store.put("jobs/old.zip", str(source), "application/zip")
    await store.put("jobs/new.zip", str(source), "application/zip")
    two_days_ago = time.time() - 2 * 86400
    os.utime(tmp_path / "store/jobs/old.zip", (two_days_ago, two_days_ago))

    removed = await remove_older_than(
        store, "jobs/", datetime.now(UTC) - timedelta(days=1)
    )

    assert removed == ["jobs/old.zip"]
    assert await store.list() == ["jobs/new.zip"]


def test_open_store_local(tmp_path: Path) -> None:
    store = open_store(storage_type="local", path=str(tmp_path / "artifacts"))

    assert isinstance(store, LocalArtifactStore)


def test_open_store_s3() -> None:
    store = open_store(
        storage_type="s3",
        bucket="ci-artifacts",
        prefix="stasis/",
        endpoint_url="http://127.0.0.1:9",
        multipart_threshold="16MiB",
    )

    assert isinstance(store, S3ArtifactStore)
    assert store.prefix == "stasis/"
    assert store.multipart_threshold == 16 * 1024 * 1024


def test_open_store_unknown_type() -> None:
    with pytest.raises(InvalidStoreConfig, match=r"'gcs'.*'local', 's3'"):
        open_store(storage_type="gcs")


def test_open_store_missing_settings() -> None:
    with pytest.raises(InvalidStoreConfig, match=r"artifacts\.path"):
        open_store(storage_type="local")
    with pytest.raises(InvalidStoreConfig, match=r"artifacts\.bucket"):
        open_store(storage_type="s3")
    with pytest.raises(InvalidStoreConfig, match=r"artifacts\.part_size"):
        open_store(storage_type="s3", bucket="b", part_size="lots")
