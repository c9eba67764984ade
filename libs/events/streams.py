"""Idempotent creation of the JetStream streams and consumers Stasis uses.

Any process may call `ensure_streams` at start; the first one creates the
streams, later ones update the settings that may change and leave data intact.
"""

import logging

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from libs.config import NatsConfig

from . import subjects

log = logging.getLogger(__name__)

LOGSINK_CONSUMER = "logsink"


def dispatch_consumer_name(pool: str) -> str:
    """Return the durable consumer shared by every executor of `pool`."""
    return f"executors-{subjects.check_token(pool, 'pool')}"


def stream_configs(config: NatsConfig) -> list[StreamConfig]:
    """Return the three stream definitions for a normalized NATS config."""
    replicas = config.replicas
    window = float(config.duplicate_window)
    return [
        StreamConfig(
            name=subjects.JOBS_STREAM,
            description="Stasis CI job events, one subject per job",
            subjects=[subjects.ALL_JOBS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=float(config.jobs_max_age),
            num_replicas=replicas,
            duplicate_window=window,
            allow_direct=True,
        ),
        StreamConfig(
            name=subjects.DISPATCH_STREAM,
            description="Stasis CI runs waiting for an executor, one subject per pool",
            subjects=[subjects.ALL_DISPATCH],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=window,
        ),
        StreamConfig(
            name=subjects.LOGS_STREAM,
            description="Stasis CI log chunks, one subject per job, run and step",
            subjects=[subjects.ALL_LOGS],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=float(config.logs_max_age),
            max_bytes=int(config.logs_max_bytes),
            num_replicas=replicas,
            duplicate_window=window,
            allow_direct=True,
        ),
    ]


async def ensure_streams(js: JetStreamContext, config: NatsConfig) -> None:
    """Create the streams, or update them in place when they already exist."""
    for wanted in stream_configs(config):
        try:
            await js.stream_info(wanted.name)  # type: ignore[arg-type]
        except NotFoundError:
            try:
                await js.add_stream(wanted)
                log.info("created stream %s", wanted.name)
                continue
            except BadRequestError:
                # Another process created it between our look-up and our add.
                pass
        await js.update_stream(wanted)


async def ensure_consumer(
    js: JetStreamContext, stream: str, config: ConsumerConfig
) -> None:
    """Create a durable consumer; an existing one with other settings is kept.

    JetStream returns the existing consumer for an identical create, so only a
    changed setting fails. The consumer then keeps its old settings until an
    operator deletes it, and the logged warning says so.
    """
    try:
        await js.add_consumer(stream, config)
    except BadRequestError as exc:
        log.warning(
            "consumer %s on %s exists with other settings (%s); keeping it. "
            "Delete it with `nats consumer rm` to apply the new ones",
            config.durable_name,
            stream,
            exc.description,
        )


def dispatch_consumer_config(pool: str, ack_wait: float) -> ConsumerConfig:
    """Return the executors' shared pull consumer of one pool."""
    return ConsumerConfig(
        durable_name=dispatch_consumer_name(pool),
        filter_subject=subjects.dispatch_subject(pool),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=-1,
    )


def logsink_consumer_config() -> ConsumerConfig:
    """Return the logsink's durable consumer over every log chunk."""
    return ConsumerConfig(
        durable_name=LOGSINK_CONSUMER,
        filter_subject=subjects.ALL_LOGS,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30.0,
        max_deliver=-1,
        max_ack_pending=50_000,
    )
