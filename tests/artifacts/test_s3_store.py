"""Behaviour specific to the S3 backend, against the moto server."""

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioboto3
import pytest

from libs.artifacts import (
    ArtifactStorageError,
    InvalidStoreConfig,
    S3ArtifactStore,
)
from tests.s3server import MotoS3Server

MIB = 1024 * 1024


@pytest.fixture
async def raw_s3(s3_server: MotoS3Server) -> AsyncIterator[Any]:
    """A plain aioboto3 client on the moto server, to look behind the store."""
    session = aioboto3.Session()
    async with session.client("s3", endpoint_url=s3_server.endpoint_url) as client:
        yield client


@pytest.fixture
async def small_part_store(
    s3_server: MotoS3Server, s3_bucket: str
) -> AsyncIterator[S3ArtifactStore]:
    store = S3ArtifactStore(
        s3_bucket,
        prefix="ci",
        endpoint_url=s3_server.endpoint_url,
        multipart_threshold=5 * MIB,
        part_size=5 * MIB,
    )
    async with store:
        yield store


async def test_multipart_upload_round_trip(
    small_part_store: S3ArtifactStore, raw_s3: Any, tmp_path: Path
) -> None:
    data = os.urandom(12 * MIB + 123)
    path = tmp_path / "big.tar.gz"
    path.write_bytes(data)

    stored = await small_part_store.put(
        "jobs/j1/big.tar.gz", str(path), "application/gzip"
    )
    downloaded = b"".join(
        [chunk async for chunk in small_part_store.open_range("jobs/j1/big.tar.gz")]
    )
    head = await raw_s3.head_object(
        Bucket=small_part_store.bucket, Key="ci/jobs/j1/big.tar.gz"
    )

    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert hashlib.sha256(downloaded).hexdigest() == stored.sha256
    # A multipart ETag ends in "-<number of parts>": 5 + 5 + 2 MiB.
    assert head["ETag"].strip('"').endswith("-3")
    assert head["Metadata"]["sha256"] == stored.sha256
    assert head["ContentType"] == "application/gzip"


async def test_small_upload_is_single_put(
    small_part_store: S3ArtifactStore, raw_s3: Any, tmp_path: Path
) -> None:
    path = tmp_path / "small.zip"
    path.write_bytes(b"small")

    stored = await small_part_store.put("small.zip", str(path), "application/zip")
    head = await raw_s3.head_object(Bucket=small_part_store.bucket, Key="ci/small.zip")

    assert "-" not in head["ETag"]
    assert stored.url == f"s3://{small_part_store.bucket}/ci/small.zip"


async def test_failed_multipart_upload_aborted(
    small_part_store: S3ArtifactStore,
    raw_s3: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "big"
    path.write_bytes(os.urandom(11 * MIB))
    client = await small_part_store._s3()
    real_upload_part = client.upload_part
    calls = 0

    async def fail_second_part(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionResetError("connection dropped by the test")
        return await real_upload_part(**kwargs)

    monkeypatch.setattr(client, "upload_part", fail_second_part)

    with pytest.raises(ConnectionResetError):
        await small_part_store.put("big", str(path), "application/gzip")

    uploads = await raw_s3.list_multipart_uploads(Bucket=small_part_store.bucket)
    assert uploads.get("Uploads", []) == []
    assert await small_part_store.list() == []


async def test_stat_returns_metadata(
    small_part_store: S3ArtifactStore, tmp_path: Path
) -> None:
    path = tmp_path / "a.zip"
    path.write_bytes(b"zip bytes")

    stored = await small_part_store.put("a.zip", str(path), "application/zip")
    info = await small_part_store.stat("a.zip")

    assert info.content_type == "application/zip"
    assert info.sha256 == stored.sha256


async def test_missing_bucket_raises_storage_error(
    s3_server: MotoS3Server, tmp_path: Path
) -> None:
    path = tmp_path / "a"
    path.write_bytes(b"a")
    store = S3ArtifactStore("no-such-bucket-here", endpoint_url=s3_server.endpoint_url)

    async with store:
        with pytest.raises(ArtifactStorageError, match="'no-such-bucket-here'"):
            await store.put("a", str(path), "text/plain")


def test_part_size_below_minimum_rejected() -> None:
    with pytest.raises(InvalidStoreConfig, match="5 MiB"):
        S3ArtifactStore("bucket", endpoint_url="http://127.0.0.1:9", part_size=MIB)
