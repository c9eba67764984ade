"""Prometheus metric families of every service, and the registry they go into.

Each service makes its families in the registry it is given. A service run
alone gets a registry of its own; `stasis up` gives one registry to all four,
so that the gateway's `/metrics` shows every family. Families that two services
share (`stasis_runs_finished_total`, NATS connection counters) are made once
per registry by `_family`, because prometheus-client raises on a second family
of the same name in one registry.

No label takes an id, a repository URL, a step name or a pool name: each of
those grows without bound. Ids go on spans and log lines instead.
"""

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from libs.events import ArtifactStored, StepFinished
from libs.events.fold import JobState

from .connections import NATS_CONNECTIONS, NatsConnectionCounts

DURATION_BUCKETS = (
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1200.0,
    1800.0,
    3600.0,
    7200.0,
)
"""Seconds; steps and runs last from under a second to the 2 h job limit."""

QUEUE_WAIT_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
)
"""Seconds; the default `scheduler.max_queue_time` is one hour."""

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods kept as label values; any other counts as "other"."""

_Family = TypeVar("_Family", Counter, Gauge, Histogram)
_families: "weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Any]]" = (
    weakref.WeakKeyDictionary()
)
_families_lock = threading.Lock()


def _family(
    registry: CollectorRegistry,
    kind: type[_Family],
    name: str,
    documentation: str,
    labelnames: tuple[str, ...] = (),
    **options: Any,
) -> _Family:
    """Return the family `name` of `registry`, made on the first call."""
    with _families_lock:
        known = _families.setdefault(registry, {})
        family = known.get(name)
        if family is None:
            family = kind(name, documentation, labelnames, registry=registry, **options)
            known[name] = family
        if not isinstance(family, kind):
            raise TypeError(f"metric {name!r} is already a {type(family).__name__}")
        return family


def runs_finished(registry: CollectorRegistry) -> Counter:
    """Return the counter of finished runs by outcome, shared by two services."""
    return _family(
        registry,
        Counter,
        "stasis_runs_finished",
        "Runs that reached an outcome, counted by the service that recorded it "
        "(executor, or scheduler for expired and never-started cancelled runs).",
        ("outcome",),
    )


class GatewayMetrics:
    """HTTP requests and submissions of the gateway."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.http_requests = _family(
            registry,
            Counter,
            "stasis_http_requests",
            "HTTP requests handled by the gateway, by route template and status.",
            ("method", "route", "status"),
        )
        self.http_duration = _family(
            registry,
            Histogram,
            "stasis_http_request_duration_seconds",
            "Time from request to the end of the response (SSE: the stream's end).",
            ("method", "route"),
        )
        self.jobs_submitted = _family(
            registry,
            Counter,
            "stasis_jobs_submitted",
            "Jobs accepted by POST /api/v1/jobs, a repeated Idempotency-Key included.",
        )

    def record_request(
        self, method: str, route: str, status: int, seconds: float
    ) -> None:
        """Count one handled request and observe its duration."""
        method = method if method in HTTP_METHODS else "other"
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(seconds)


class SchedulerMetrics:
    """Queue depth, queue wait and the scheduler's own run outcomes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queue_depth = _family(
            registry,
            Gauge,
            "stasis_queue_depth",
            "Runs submitted or queued and not yet dispatched, over every pool.",
        )
        self.queue_wait = _family(
            registry,
            Histogram,
            "stasis_queue_wait_seconds",
            "Time from a run's submission to its dispatch.",
            buckets=QUEUE_WAIT_BUCKETS,
        )
        self.dispatched = _family(
            registry,
            Counter,
            "stasis_runs_dispatched",
            "Dispatch orders published for runs, first publishes only.",
        )
        self.runs_finished = runs_finished(registry)

    def set_queue_depth(self, jobs: Iterable[JobState]) -> None:
        """Set the queue depth from the scheduler's folded jobs."""
        depth = 0
        for job in jobs:
            run = job.last_run
            waiting = run.status in ("submitted", "queued")
            if waiting and run.dispatched_at is None:
                depth += 1
        self.queue_depth.set(depth)


class ExecutorMetrics:
    """Runs, steps, slots, redeliveries, log and artifact bytes of an executor."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs_finished = runs_finished(registry)
        self.run_duration = _family(
            registry,
            Histogram,
            "stasis_run_duration_seconds",
            "Time of one run attempt on an executor, from claim to outcome.",
            ("outcome",),
            buckets=DURATION_BUCKETS,
        )
        self.steps_finished = _family(
            registry,
            Counter,
            "stasis_steps_finished",
            "Step attempts that ended, and skipped steps, by outcome.",
            ("outcome",),
        )
        self.step_duration = _family(
            registry,
            Histogram,
            "stasis_step_duration_seconds",
            "Time of one step attempt's container; skipped steps are not observed.",
            ("outcome",),
            buckets=DURATION_BUCKETS,
        )
        self.slots_busy = _family(
            registry, Gauge, "stasis_executor_slots_busy", "Runs running now."
        )
        self.slots_free = _family(
            registry,
            Gauge,
            "stasis_executor_slots_free",
            "Slots that may take a dispatch order now.",
        )
        self.redeliveries = _family(
            registry,
            Counter,
            "stasis_dispatch_redeliveries",
            "Dispatch orders received with JetStream num_delivered above 1.",
        )
        self.log_bytes = _family(
            registry,
            Counter,
            "stasis_log_bytes",
            "Characters of step output published as log chunks, after masking "
            "and truncation.",
        )
        self.artifact_bytes = _family(
            registry,
            Counter,
            "stasis_artifact_bytes",
            "Bytes of artifact archives stored by executors.",
        )

    def track_slots(self, busy: Callable[[], int], slots: int) -> None:
        """Read the busy and free slot gauges from `busy` at each scrape."""
        self.slots_busy.set_function(lambda: float(busy()))
        self.slots_free.set_function(lambda: float(max(0, slots - busy())))

    def observe_event(self, event: object) -> None:
        """Count the step outcome or artifact size in an event an executor appended."""
        if isinstance(event, StepFinished):
            self.steps_finished.labels(event.outcome).inc()
            if event.outcome != "skipped":
                self.step_duration.labels(event.outcome).observe(event.duration_s)
        elif isinstance(event, ArtifactStored):
            self.artifact_bytes.inc(event.size)

    def observe_run(self, outcome: str, seconds: float) -> None:
        """Count a run outcome that this executor appended."""
        self.runs_finished.labels(outcome).inc()
        self.run_duration.labels(outcome).observe(seconds)


class LogsinkMetrics:
    """Log chunks the logsink persisted."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.persisted_bytes = _family(
            registry,
            Counter,
            "stasis_logsink_persisted_bytes",
            "Bytes of encoded log chunks written to the logsink's files.",
        )


class NatsCollector(Collector):
    """Reports the NATS connection counts of the services added to it."""

    def __init__(self, counts: NatsConnectionCounts) -> None:
        self._counts = counts
        self._kinds: set[str] = set()

    def add(self, kind: str) -> None:
        """Report the counts of clients of service `kind` too."""
        self._kinds.add(kind)

    def collect(self) -> Iterator[Metric]:
        """Yield the reconnect and disconnect counters."""
        for event in ("reconnect", "disconnect"):
            family = CounterMetricFamily(
                f"stasis_nats_{event}s",
                f"NATS client {event}s, by the service that owns the client.",
                labels=["service"],
            )
            for kind in sorted(self._kinds):
                family.add_metric([kind], self._counts.count(kind, event))
            yield family


_nats_collectors: "weakref.WeakKeyDictionary[CollectorRegistry, NatsCollector]" = (
    weakref.WeakKeyDictionary()
)


def watch_nats(registry: CollectorRegistry, kind: str) -> None:
    """Report NATS reconnects and disconnects of service `kind` in `registry`."""
    with _families_lock:
        collector = _nats_collectors.get(registry)
        if collector is None:
            collector = NatsCollector(NATS_CONNECTIONS)
            registry.register(collector)
            _nats_collectors[registry] = collector
        collector.add(kind)
