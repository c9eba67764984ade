"""The artifact metadata that the executor puts into events."""

from datetime import datetime
from typing import Literal

import msgspec


class ArtifactInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One stored artifact archive of a step.

    New fields must get defaults so that recorded events still decode.
    """

    name: str
    """The artifact's name from the pipeline."""
    key: str
    """Key of the archive in the artifact store."""
    size: int
    """Size of the archive in bytes."""
    sha256: str
    """Hex SHA-256 of the archive."""
    format: Literal["tar.gz", "zip"]
    storage_url: str
    """Location in the store: `file://...` or `s3://bucket/key`."""
    content_type: str
    created_at: datetime
    """When the archive was stored, timezone-aware."""
