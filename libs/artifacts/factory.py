"""Opening the configured artifact store from plain settings."""

from libs.units import parse_size

from .errors import InvalidStoreConfig
from .local import LocalArtifactStore
from .s3 import S3ArtifactStore
from .store import ArtifactStore

STORAGE_TYPES = ("local", "s3")


def open_store(
    *,
    storage_type: str = "local",
    path: str | None = None,
    bucket: str | None = None,
    prefix: str = "",
    region: str | None = None,
    endpoint_url: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    multipart_threshold: int | str = "8MiB",
    part_size: int | str = "8MiB",
) -> ArtifactStore:
    """Return the store that `storage_type` names, built from the other settings.

    `path` is the root directory of the local store. The other settings apply to
    S3, where credentials left as None come from the standard AWS environment.
    Sizes are bytes or strings such as "8MiB". Raises `InvalidStoreConfig` for an
    unknown storage type or a missing setting.
    """
    if storage_type == "local":
        if not path:
            raise InvalidStoreConfig(
                "artifacts.path is not set: the local artifact store needs a root "
                "directory"
            )
        return LocalArtifactStore(path)
    if storage_type == "s3":
        if not bucket:
            raise InvalidStoreConfig(
                "artifacts.bucket is not set: the s3 artifact store needs a bucket"
            )
        return S3ArtifactStore(
            bucket,
            prefix=prefix,
            region=region,
            endpoint_url=endpoint_url,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            multipart_threshold=_size_setting(
                "multipart_threshold", multipart_threshold
            ),
            part_size=_size_setting("part_size", part_size),
        )
    raise InvalidStoreConfig(
        f"unknown artifacts.storage_type {storage_type!r}: use one of "
        + ", ".join(repr(name) for name in STORAGE_TYPES)
    )


def _size_setting(name: str, value: int | str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise InvalidStoreConfig(f"artifacts.{name}: {exc}") from exc
