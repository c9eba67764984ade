"""Opening the artifact store that a Stasis configuration names."""

from libs.config import Config

from .factory import open_store
from .store import ArtifactStore


def store_from_config(config: Config) -> ArtifactStore:
    """Open the store of the `artifacts` section; the caller closes it."""
    settings = config.artifacts
    return open_store(
        storage_type=settings.storage_type,
        path=config.artifacts_dir,
        bucket=settings.bucket,
        prefix=settings.prefix,
        region=settings.region,
        endpoint_url=settings.endpoint_url,
        access_key_id=settings.access_key_id,
        secret_access_key=settings.secret_access_key,
        multipart_threshold=settings.multipart_threshold,
        part_size=settings.part_size,
    )


def artifact_key(job_id: str, run_id: str, name: str) -> str:
    """Return the store key of one artifact archive of a run."""
    return f"{job_id}/{run_id}/{name}"
