"""The artifact store backend for S3 and S3-compatible servers, through aioboto3.

Files at or above `multipart_threshold` bytes go up as a multipart upload of
`part_size` parts, and a failed upload is aborted so no parts are left billed.
The SHA-256 of each object is kept in its user metadata (`x-amz-meta-sha256`).

Credentials come from the arguments or, when those are None, from botocore's
standard chain: AWS_* environment variables, shared config files, and on EC2 the
instance metadata service unless AWS_EC2_METADATA_DISABLED=true.
"""

import asyncio
import contextlib
import hashlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC
from typing import IO, Any

import aioboto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
)

from .errors import ArtifactNotFound, ArtifactStorageError, InvalidStoreConfig
from .store import (
    ArtifactStore,
    ObjectInfo,
    StoredObject,
    check_range,
    validate_prefix,
)

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# S3 rejects parts below 5 MiB (except the last) and uploads of over 10,000 parts.
MIN_PART_SIZE = 5 * MIB
MAX_PARTS = 10_000
_HASH_CHUNK = MIB
_READ_CHUNK = 256 * 1024
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


class S3ArtifactStore(ArtifactStore):
    """Stores artifacts as objects in one S3 bucket, under an optional prefix."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        multipart_threshold: int = 8 * MIB,
        part_size: int = 8 * MIB,
    ) -> None:
        if not bucket:
            raise InvalidStoreConfig("artifacts.bucket is empty: name an S3 bucket")
        if part_size < MIN_PART_SIZE:
            raise InvalidStoreConfig(
                f"S3 part size {part_size} is below the S3 minimum of "
                f"{MIN_PART_SIZE} bytes (5 MiB), so raise part_size"
            )
        validate_prefix(prefix)
        self.bucket = bucket
        self.prefix = prefix.rstrip("/") + "/" if prefix else ""
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._endpoint_url = endpoint_url
        self._session = aioboto3.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
        )
        self._client: Any = None
        self._exit_stack = contextlib.AsyncExitStack()
        self._client_lock = asyncio.Lock()

    async def close(self) -> None:
        """Close the S3 client. The next call opens a new one."""
        self._client = None
        await self._exit_stack.aclose()

    async def _put(self, key: str, source_path: str, content_type: str) -> StoredObject:
        size, digest = await asyncio.to_thread(_size_and_sha256, source_path)
        target = self.prefix + key
        extra = {"ContentType": content_type, "Metadata": {"sha256": digest}}
        client = await self._s3()
        with self._errors(key):
            if size < self.multipart_threshold:
                body = await asyncio.to_thread(_read_all, source_path)
                await client.put_object(
                    Bucket=self.bucket, Key=target, Body=body, **extra
                )
            else:
                await self._put_multipart(client, target, source_path, size, extra)
        log.debug("stored %s (%d bytes) in s3://%s", target, size, self.bucket)
        return StoredObject(key, size, digest, f"s3://{self.bucket}/{target}")

    async def _put_multipart(
        self, client: Any, target: str, source_path: str, size: int, extra: Any
    ) -> None:
        # Grow the parts when the file would need more than S3's 10,000 of them.
        part_size = max(self.part_size, math.ceil(size / MAX_PARTS))
        created = await client.create_multipart_upload(
            Bucket=self.bucket, Key=target, **extra
        )
        upload = {"Bucket": self.bucket, "Key": target, "UploadId": created["UploadId"]}
        try:
            parts = []
            async for number, chunk in _read_parts(source_path, part_size):
                sent = await client.upload_part(PartNumber=number, Body=chunk, **upload)
                parts.append({"ETag": sent["ETag"], "PartNumber": number})
            await client.complete_multipart_upload(
                MultipartUpload={"Parts": parts}, **upload
            )
        except BaseException:
            await self._abort(client, upload)
            raise

    async def _abort(self, client: Any, upload: dict[str, str]) -> None:
        try:
            await asyncio.shield(client.abort_multipart_upload(**upload))
        except (BotoCoreError, ClientError) as exc:
            log.warning(
                "aborting multipart upload %s of s3://%s/%s failed: %s. "
                "A bucket lifecycle rule for incomplete uploads removes the parts",
                upload["UploadId"],
                self.bucket,
                upload["Key"],
                exc,
            )

    async def _open_range(
        self, key: str, start: int, end: int | None
    ) -> AsyncIterator[bytes]:
        # The size check first keeps the 416 behaviour identical to the local
        # backend, including for empty objects, which S3 answers differently.
        info = await self._stat(key)
        check_range(key, start, end, info.size)
        request: dict[str, str] = {"Bucket": self.bucket, "Key": self.prefix + key}
        if start or end is not None:
            request["Range"] = f"bytes={start}-{'' if end is None else end}"
        client = await self._s3()
        with self._errors(key):
            response = await client.get_object(**request)
            body = response["Body"]
            # Entering the body returns the raw HTTP response, so iterate `body`.
            async with body:
                async for chunk in body.iter_chunks(_READ_CHUNK):
                    yield chunk

    async def _stat(self, key: str) -> ObjectInfo:
        client = await self._s3()
        with self._errors(key):
            head = await client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        return ObjectInfo(
            key=key,
            size=head["ContentLength"],
            modified=head["LastModified"].astimezone(UTC),
            content_type=head.get("ContentType"),
            sha256=head.get("Metadata", {}).get("sha256"),
        )

    async def _delete(self, key: str) -> None:
        client = await self._s3()
        with self._errors(key):
            await client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    async def _list_info(self, prefix: str) -> list[ObjectInfo]:
        client = await self._s3()
        found: list[ObjectInfo] = []
        with self._errors(prefix):
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            async for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) :]
                    modified = item["LastModified"].astimezone(UTC)
                    found.append(ObjectInfo(key, item["Size"], modified))
        return found

    async def _s3(self) -> Any:
        async with self._client_lock:
            if self._client is None:
                config = None
                if self._endpoint_url:
                    # S3-compatible servers on an IP or a single host name
                    # only understand path-style bucket addressing.
                    config = BotoConfig(s3={"addressing_style": "path"})
                client = self._session.client(
                    "s3", endpoint_url=self._endpoint_url, config=config
                )
                self._client = await self._exit_stack.enter_async_context(client)
            return self._client

    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Translate botocore errors for `key` into the library's errors."""
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND_CODES:
                raise ArtifactNotFound(key) from exc
            raise ArtifactStorageError(
                f"S3 request for {key!r} in bucket {self.bucket!r} failed: {exc}"
            ) from exc
        except BotoCoreError as exc:
            raise ArtifactStorageError(
                f"S3 request for {key!r} in bucket {self.bucket!r} failed: {exc}. "
                "Check artifacts.endpoint_url, the region and the credentials"
            ) from exc


def _size_and_sha256(path: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as source:
        while chunk := source.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _read_all(path: str) -> bytes:
    with open(path, "rb") as source:
        return source.read()


async def _read_parts(path: str, part_size: int) -> AsyncIterator[tuple[int, bytes]]:
    """Yield numbered parts of the file, reading each in a worker thread."""
    source: IO[bytes] = await asyncio.to_thread(open, path, "rb")
    read: Callable[[int], bytes] = source.read
    try:
        number = 1
        while chunk := await asyncio.to_thread(read, part_size):
            yield number, chunk
            number += 1
    finally:
        await asyncio.to_thread(source.close)
