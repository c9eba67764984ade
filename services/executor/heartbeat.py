"""Executor heartbeats: who is alive, in which pool, with which labels and slots.

Every executor puts its record in the `stasis_executors` key-value bucket every
`interval` seconds and deletes it when it stops. The scheduler reads the bucket
to learn which executors are live and dispatches a run only while an executor
with the run's labels has a free slot. Orders carry the labels they need, and
an executor that lacks one gives the order back to the pool's consumer.
"""

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from libs.events import decode_dispatch

log = logging.getLogger(__name__)

HEARTBEAT_BUCKET = "stasis_executors"
BUCKET_MAX_AGE = 60.0
"""Seconds after which NATS drops the record of an executor that stopped
without deleting it; the scheduler's own liveness window is shorter."""
DECLINE_DELAY = 0.2
"""Seconds before a declined order is offered to the pool's executors again."""

_KEY_UNSAFE = re.compile(r"[^-_=.a-zA-Z0-9]")


class ExecutorHeartbeat(msgspec.Struct, frozen=True, kw_only=True):
    """The record an executor keeps in the heartbeat bucket."""

    executor_id: str
    pool: str
    labels: list[str] = []
    slots: int
    """`executor.max_concurrent_jobs` of the executor."""
    busy_slots: int = 0


_decoder = msgspec.json.Decoder(ExecutorHeartbeat)
_encoder = msgspec.json.Encoder()


def heartbeat_key(executor_id: str) -> str:
    """Return the bucket key of an executor: its id with unsafe characters as '_'."""
    return _KEY_UNSAFE.sub("_", executor_id) or "_"


def parse_labels(text: str) -> tuple[str, ...]:
    """Split a comma-separated label list such as "docker,arm64", sorted, no dups."""
    return tuple(sorted({label.strip() for label in text.split(",") if label.strip()}))


async def open_heartbeat_bucket(js: JetStreamContext, replicas: int = 1) -> KeyValue:
    """Return the heartbeat bucket, creating it when it does not exist yet."""
    try:
        return await js.key_value(HEARTBEAT_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(
            bucket=HEARTBEAT_BUCKET,
            description="Stasis CI executor heartbeats",
            ttl=BUCKET_MAX_AGE,
            history=1,
            replicas=replicas,
        )


async def read_heartbeats(kv: KeyValue) -> dict[str, tuple[int, ExecutorHeartbeat]]:
    """Return every stored heartbeat by executor id, with its bucket revision."""
    try:
        keys = await kv.keys()
    except NoKeysError:
        return {}
    records: dict[str, tuple[int, ExecutorHeartbeat]] = {}
    for key in keys:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            continue  # deleted between the listing and the read
        if not entry.value:
            continue
        try:
            record = _decoder.decode(entry.value)
        except msgspec.ValidationError as exc:
            log.warning("skipping invalid heartbeat %r: %s", key, exc)
            continue
        records[record.executor_id] = (entry.revision or 0, record)
    return records


class Heartbeat:
    """Publishes one executor's heartbeat and declines orders it cannot run."""

    def __init__(
        self,
        executor_id: str,
        pool: str,
        labels: tuple[str, ...],
        slots: int,
        busy_slots: Callable[[], int],
        interval: float = 2.0,
    ) -> None:
        self.executor_id = executor_id
        self.pool = pool
        self.labels = tuple(sorted(set(labels)))
        self.slots = slots
        self.interval = interval
        self._busy_slots = busy_slots
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, js: JetStreamContext, replicas: int = 1) -> None:
        """Put the first heartbeat, then keep putting one every `interval`."""
        self._kv = await open_heartbeat_bucket(js, replicas)
        try:
            await self._put()
        except Exception as exc:  # a NATS node may be away; _beat tries again
            log.warning("first heartbeat of %s failed: %s", self.executor_id, exc)
        self._task = asyncio.create_task(self._beat(), name="executor-heartbeat")

    async def stop(self) -> None:
        """Stop beating and delete the record, so the scheduler stops at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._kv is not None:
            try:
                await self._kv.delete(heartbeat_key(self.executor_id))
            except Exception as exc:  # the bucket's max age removes it later
                log.warning(
                    "deleting heartbeat of %s failed: %s", self.executor_id, exc
                )

    async def declines(self, msg: Msg) -> bool:
        """Give the order back when it needs a label this executor lacks.

        Returns True when the order was declined; the caller then leaves it.
        """
        missing = set(decode_dispatch(msg.data).labels) - set(self.labels)
        if not missing:
            return False
        log.debug("declining order that needs labels %s", sorted(missing))
        await msg.nak(delay=DECLINE_DELAY)
        return True

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self._put()
            except Exception as exc:  # the next interval tries again
                log.warning("heartbeat of %s failed: %s", self.executor_id, exc)

    async def _put(self) -> None:
        assert self._kv is not None
        record = ExecutorHeartbeat(
            executor_id=self.executor_id,
            pool=self.pool,
            labels=list(self.labels),
            slots=self.slots,
            busy_slots=self._busy_slots(),
        )
        await self._kv.put(heartbeat_key(self.executor_id), _encoder.encode(record))
