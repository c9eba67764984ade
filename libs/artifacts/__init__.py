"""Artifacts: glob matching, safe archives of workspace files, and storage backends.

The executor turns the workspace tar of a step into stored archives with this
package: `collect_from_tar` selects the files, `Collected.write_archive` writes a
tar.gz or zip, and an `ArtifactStore` from `open_store` keeps it.
"""

from .archive import (
    CONTENT_TYPES,
    ArchiveEntry,
    ArchiveFormat,
    WrittenArchive,
    write_archive,
)
from .collect import Collected, collect_from_tar
from .errors import (
    ArtifactError,
    ArtifactNotFound,
    ArtifactStorageError,
    ArtifactTooLarge,
    InvalidArchive,
    InvalidArtifactKey,
    InvalidPattern,
    InvalidStoreConfig,
    RangeNotSatisfiable,
    UnsafeArchive,
)
from .extract import safe_extract
from .factory import STORAGE_TYPES, open_store
from .local import LocalArtifactStore
from .matcher import MatchResult, Pattern, Selection, compile_pattern, match_paths
from .model import ArtifactInfo
from .retention import remove_older_than
from .s3 import S3ArtifactStore
from .store import (
    ArtifactStore,
    ObjectInfo,
    StoredObject,
    validate_key,
    validate_prefix,
)

__all__ = [
    "CONTENT_TYPES",
    "STORAGE_TYPES",
    "ArchiveEntry",
    "ArchiveFormat",
    "ArtifactError",
    "ArtifactInfo",
    "ArtifactNotFound",
    "ArtifactStorageError",
    "ArtifactStore",
    "ArtifactTooLarge",
    "Collected",
    "InvalidArchive",
    "InvalidArtifactKey",
    "InvalidPattern",
    "InvalidStoreConfig",
    "LocalArtifactStore",
    "MatchResult",
    "ObjectInfo",
    "Pattern",
    "RangeNotSatisfiable",
    "S3ArtifactStore",
    "Selection",
    "StoredObject",
    "UnsafeArchive",
    "WrittenArchive",
    "collect_from_tar",
    "compile_pattern",
    "match_paths",
    "open_store",
    "remove_older_than",
    "safe_extract",
    "validate_key",
    "validate_prefix",
    "write_archive",
]
