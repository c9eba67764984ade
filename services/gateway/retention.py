"""Deleting artifacts older than `artifacts.retention`, and recording it.

The gateway runs this because it has both the projection (which artifacts
exist, and when they were stored) and the store. Each deletion is followed by
an `artifact.removed` event, so the API stops listing the artifact and the
audit trail says why it is gone. Several gateways may run it at once: a
delete of a missing object is fine, and the event's message id is the key,
so the stream records one removal.
"""

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext

from libs.artifacts import ArtifactNotFound, ArtifactStore
from libs.events import ArtifactRemoved
from libs.events.journal import append

from .projection import Projection

log = logging.getLogger(__name__)


async def remove_expired(
    projection: Projection,
    store: ArtifactStore,
    js: JetStreamContext,
    max_age: float,
    now: datetime | None = None,
) -> list[str]:
    """Delete every artifact stored more than `max_age` seconds ago; return keys."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=max_age)
    removed = []
    for job in list(projection.jobs.values()):
        for run in job.runs:
            for record in run.artifacts:
                if record.stored_at >= cutoff:
                    continue
                with contextlib.suppress(ArtifactNotFound):
                    await store.delete(record.key)
                reason = f"older than artifacts.retention ({max_age:g}s)"
                event = ArtifactRemoved(
                    job_id=job.job_id,
                    run_id=run.run_id,
                    name=record.name,
                    key=record.key,
                    reason=reason,
                )
                await append(js, event, msg_id=f"{record.key}:removed")
                removed.append(record.key)
                log.info(
                    "removed artifact %s of run %s (%s, step %s)",
                    record.name,
                    run.run_id,
                    reason,
                    record.step,
                )
    return removed


async def retention_loop(
    projection: Projection,
    store: ArtifactStore,
    js: JetStreamContext,
    max_age: float,
    interval: float,
) -> None:
    """Run `remove_expired` every `interval` seconds until cancelled."""
    while True:
        try:
            await remove_expired(projection, store, js, max_age)
        except Exception:  # the next round tries again
            log.exception("artifact retention round failed")
        await asyncio.sleep(interval)
