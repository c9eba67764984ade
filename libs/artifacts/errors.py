"""Exceptions raised by the artifact library.

ArtifactError
├── InvalidPattern        a glob pattern that is absolute, climbs with `..` or is empty
├── ArtifactTooLarge      the selected files exceed `artifacts.max_bytes_per_job`
├── InvalidArchive        input that is not a readable tar or zip archive
├── UnsafeArchive         an archive member that would land outside the destination
├── InvalidArtifactKey    a storage key that could leave the store's namespace
├── ArtifactNotFound      a key with no stored object
├── RangeNotSatisfiable   a byte range that starts past the end of the object
├── InvalidStoreConfig    storage settings that name no usable backend
└── ArtifactStorageError  a backend call that failed (S3 error, I/O error)
"""


class ArtifactError(Exception):
    """Base class of every error raised by `libs.artifacts`."""


class InvalidPattern(ArtifactError, ValueError):
    """Raised for a glob pattern that cannot select files inside the workspace."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(f"invalid artifact pattern {pattern!r}: {reason}")
        self.pattern = pattern


class ArtifactTooLarge(ArtifactError):
    """Raised when the selected files add up to more than the configured limit."""

    def __init__(self, limit: int, reached: int, path: str) -> None:
        super().__init__(
            f"artifacts reached {reached} bytes at {path!r}, over the limit of "
            f"{limit} bytes: narrow the step's artifact patterns or raise "
            "artifacts.max_bytes_per_job"
        )
        self.limit = limit
        self.reached = reached
        self.path = path


class InvalidArchive(ArtifactError):
    """Raised for a tar stream or archive file that cannot be read."""


class UnsafeArchive(ArtifactError):
    """Raised by `safe_extract` for a member that could write outside `dest`."""

    def __init__(self, member: str, reason: str) -> None:
        super().__init__(f"unsafe archive member {member!r}: {reason}")
        self.member = member


class InvalidArtifactKey(ArtifactError, ValueError):
    """Raised for a storage key that is empty, absolute, or climbs with `..`."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid artifact key {key!r}: {reason}")
        self.key = key


class ArtifactNotFound(ArtifactError, LookupError):
    """Raised when no object is stored under the key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"artifact {key!r} not found in the store")
        self.key = key


class RangeNotSatisfiable(ArtifactError, ValueError):
    """Raised for a byte range outside the object, like HTTP status 416."""

    def __init__(self, key: str, start: int, end: int | None, size: int) -> None:
        range_text = f"{start}-{'' if end is None else end}"
        super().__init__(
            f"range {range_text} is not satisfiable for artifact {key!r} of "
            f"{size} bytes: start must be below the size and end must not be "
            "below start"
        )
        self.key = key
        self.size = size


class InvalidStoreConfig(ArtifactError, ValueError):
    """Raised by `open_store` for settings that name no usable backend."""


class ArtifactStorageError(ArtifactError):
    """Raised when a storage backend call fails, with the backend's error chained."""
