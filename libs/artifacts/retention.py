"""Removing stored artifacts older than a cutoff time."""

import logging
from datetime import datetime

from .store import ArtifactStore

log = logging.getLogger(__name__)


async def remove_older_than(
    store: ArtifactStore, prefix: str, cutoff: datetime
) -> list[str]:
    """Delete every object under `prefix` last written before `cutoff`.

    Returns the deleted keys, sorted. `cutoff` must be timezone-aware, because the
    stores report modification times in UTC.
    """
    if cutoff.tzinfo is None or cutoff.utcoffset() is None:
        raise ValueError(
            f"retention cutoff {cutoff.isoformat()!r} has no timezone: "
            "pass an aware datetime such as datetime.now(UTC) - age"
        )
    expired = [
        info.key for info in await store.list_info(prefix) if info.modified < cutoff
    ]
    for key in expired:
        await store.delete(key)
    log.info(
        "removed %d artifacts under %r last written before %s",
        len(expired),
        prefix,
        cutoff.isoformat(),
    )
    return expired
