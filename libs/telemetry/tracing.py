"""OpenTelemetry traces: one tracer provider per process, spans per job and step.

The provider is made on first use and is never set as OpenTelemetry's global
provider, so that importing Stasis changes nothing for other code in the
process. Its span processors sit behind `_FanOut`, which can add and remove
them at run time: an OTLP exporter while a service with
`telemetry.otlp_endpoint` runs, an in-memory exporter while a test captures.
With no processor, spans are still made so that `traceparent` flows between
services, but nothing leaves the process.

The trace context crosses processes in NATS message headers, as W3C
`traceparent` (and `tracestate`), injected and extracted here.
"""

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import (
    TraceContextTextMapPropagator,
)

from .logformat import job_log_context

log = logging.getLogger(__name__)

TRACER_NAME = "stasis"
ATTR_JOB = "stasis.job_id"
ATTR_RUN = "stasis.run_id"
ATTR_STEP = "stasis.step"
ATTR_ATTEMPT = "stasis.attempt"
MAX_BATCH_JOB_IDS = 32
"""Job ids listed on a forwarded batch's span; the rest are left off."""

_propagator = TraceContextTextMapPropagator()
_lock = threading.Lock()
_otlp: dict[str, tuple[SpanProcessor, int]] = {}
"""OTLP endpoint to its batch processor and the number of services using it."""


class _FanOut(SpanProcessor):
    """Passes each span to the processors attached at that moment."""

    def __init__(self) -> None:
        self._processors: tuple[SpanProcessor, ...] = ()
        self._lock = threading.Lock()

    def add(self, processor: SpanProcessor) -> None:
        with self._lock:
            self._processors = (*self._processors, processor)

    def remove(self, processor: SpanProcessor) -> None:
        with self._lock:
            self._processors = tuple(p for p in self._processors if p is not processor)

    @property
    def processors(self) -> tuple[SpanProcessor, ...]:
        return self._processors

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        for processor in self._processors:
            processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        for processor in self._processors:
            processor.on_end(span)

    def shutdown(self) -> None:
        for processor in self._processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self._processors)


class _ProcessState:
    """The process's tracer provider and fan-out, made on first use."""

    provider: TracerProvider | None = None
    fan_out: _FanOut | None = None


def tracer_provider(service_name: str = "stasis") -> TracerProvider:
    """Return the process's tracer provider, made on the first call.

    `service_name` of the first call becomes the resource's `service.name`.
    The first call also instruments every aiohttp ClientSession made from then
    on (the S3 store, log forwarding, Docker API calls) with client spans.
    """
    with _lock:
        if _ProcessState.provider is None:
            fan_out = _FanOut()
            resource = Resource.create({SERVICE_NAME: service_name})
            provider = TracerProvider(resource=resource)
            provider.add_span_processor(fan_out)
            AioHttpClientInstrumentor().instrument(tracer_provider=provider)
            _ProcessState.fan_out = fan_out
            _ProcessState.provider = provider
        return _ProcessState.provider


def _processors() -> _FanOut:
    tracer_provider()
    assert _ProcessState.fan_out is not None
    return _ProcessState.fan_out


def add_span_processor(processor: SpanProcessor) -> None:
    """Send every span that ends from now on to `processor` as well."""
    _processors().add(processor)


def remove_span_processor(processor: SpanProcessor) -> None:
    """Stop sending spans to `processor`; it is not shut down."""
    _processors().remove(processor)


def span_processors() -> tuple[SpanProcessor, ...]:
    """Return the processors that spans go to now."""
    return _processors().processors


@contextlib.contextmanager
def capture_spans() -> Iterator[InMemorySpanExporter]:
    """Collect the spans that end inside the block in memory, for tests."""
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    add_span_processor(processor)
    try:
        yield exporter
    finally:
        remove_span_processor(processor)


def tracer() -> trace.Tracer:
    """Return the tracer of Stasis's own spans."""
    return tracer_provider().get_tracer(TRACER_NAME)


def inject_trace_context(headers: dict[str, str]) -> dict[str, str]:
    """Add the current span's `traceparent` to message headers; return them."""
    _propagator.inject(headers)
    return headers


def extract_trace_context(headers: Mapping[str, str] | None) -> Context | None:
    """Return the trace context that message headers carry, or None."""
    if not headers or "traceparent" not in headers:
        return None
    return _propagator.extract(dict(headers))


def job_attributes(
    job_id: str,
    run_id: str | None = None,
    step: str | None = None,
    attempt: int | None = None,
) -> dict[str, str | int]:
    """Return the span attributes that name a job, run, step and attempt."""
    attributes: dict[str, str | int] = {ATTR_JOB: job_id}
    if run_id is not None:
        attributes[ATTR_RUN] = run_id
    if step is not None:
        attributes[ATTR_STEP] = step
    if attempt is not None:
        attributes[ATTR_ATTEMPT] = attempt
    return attributes


@contextlib.contextmanager
def job_span(
    name: str,
    job_id: str,
    run_id: str | None = None,
    *,
    step: str | None = None,
    attempt: int | None = None,
    parent_headers: Mapping[str, str] | None = None,
    start_time: datetime | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    links: list[Link] | None = None,
    **attributes: Any,
) -> Iterator[trace.Span]:
    """Run the block in a span of one job, and log its lines with the job's ids.

    With `parent_headers` the span continues the trace those message headers
    carry, else the current one. `start_time` backdates the span, for a wait
    that began before this process saw it.
    """
    parent = extract_trace_context(parent_headers)
    span_attributes: dict[str, Any] = job_attributes(job_id, run_id, step, attempt)
    span_attributes.update({f"stasis.{k}": v for k, v in attributes.items()})
    start_ns = int(start_time.timestamp() * 1e9) if start_time else None
    with (
        job_log_context(job_id, run_id, step),
        tracer().start_as_current_span(
            name,
            context=parent,
            kind=kind,
            attributes=span_attributes,
            start_time=start_ns,
            links=links,
        ) as span,
    ):
        yield span


def set_job_attributes(job_id: str, run_id: str | None = None) -> None:
    """Put a job's ids on the current span, such as the gateway's request span."""
    trace.get_current_span().set_attributes(job_attributes(job_id, run_id))


def links_from_headers(
    headers: list[Mapping[str, str] | None], limit: int = 32
) -> tuple[Context | None, list[Link]]:
    """Return the first trace context of `headers` and links to the others.

    A logsink batch contains chunks of many jobs: its span continues the first
    chunk's trace and links to at most `limit` other span contexts.
    """
    parent: Context | None = None
    links: list[Link] = []
    seen: set[tuple[int, int]] = set()
    for carrier in headers:
        extracted = extract_trace_context(carrier)
        if extracted is None:
            continue
        span_context = trace.get_current_span(extracted).get_span_context()
        key = (span_context.trace_id, span_context.span_id)
        if key in seen:
            continue
        seen.add(key)
        if parent is None:
            parent = extracted
        elif len(links) < limit:
            links.append(Link(span_context))
    return parent, links


def otlp_traces_url(endpoint: str) -> str:
    """Return the OTLP/HTTP traces URL of a collector's base URL."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def start_otlp_export(endpoint: str) -> None:
    """Export spans to the OTLP/HTTP collector at `endpoint` in batches.

    Each call needs a matching `stop_otlp_export`: services in one process
    that name the same endpoint share one exporter.
    """
    _processors()
    with _lock:
        known = _otlp.get(endpoint)
        if known is not None:
            _otlp[endpoint] = (known[0], known[1] + 1)
            return
        processor = BatchSpanProcessor(
            OTLPSpanExporter(endpoint=otlp_traces_url(endpoint))
        )
        _otlp[endpoint] = (processor, 1)
    add_span_processor(processor)


def stop_otlp_export(endpoint: str) -> None:
    """Undo one `start_otlp_export`; the last one flushes and closes the exporter.

    Blocks for up to the exporter's timeout while it sends the last batch.
    """
    with _lock:
        known = _otlp.get(endpoint)
        if known is None:
            return
        processor, users = known
        if users > 1:
            _otlp[endpoint] = (processor, users - 1)
            return
        del _otlp[endpoint]
    remove_span_processor(processor)
    processor.shutdown()


def otlp_endpoints() -> list[str]:
    """Return the endpoints that spans are exported to now."""
    with _lock:
        return sorted(_otlp)


async def headers_at(js: JetStreamContext, stream: str, seq: int) -> dict[str, str]:
    """Return the headers of the message at `seq` of `stream`, or {} if unreadable.

    The scheduler reads a run's `job.submitted` or `run.requested` headers this
    way to continue the trace that the gateway started.
    """
    if seq < 1:
        return {}
    try:
        stored = await js.get_msg(stream, seq)
    except (NatsError, TimeoutError) as exc:
        log.debug("no trace context: message %d of %s unreadable: %s", seq, stream, exc)
        stored = None
    # On Python 3.11, asyncio.wait_for (inside nats-py's request) returns the
    # reply instead of raising when a cancel arrives as the reply does; the
    # cancel is then lost and a stopping service never stops. Raise it here.
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    return dict(stored.headers or {}) if stored is not None else {}


@contextlib.contextmanager
def log_batch_span(
    messages: Sequence[Msg], endpoint: int, batch_id: str
) -> Iterator[trace.Span]:
    """Run the block in a span of one forwarded batch of log chunks.

    The span continues the trace of the first chunk that carries one and links
    to the other chunks' spans, because one batch contains chunks of many jobs.
    """
    parent, links = links_from_headers([msg.headers for msg in messages])
    job_ids = sorted({_job_of_log_subject(msg.subject) for msg in messages})
    attributes: dict[str, Any] = {
        "stasis.forward.endpoint": endpoint,
        "stasis.forward.batch_id": batch_id,
        "stasis.forward.chunks": len(messages),
        "stasis.job_ids": job_ids[:MAX_BATCH_JOB_IDS],
    }
    with tracer().start_as_current_span(
        "logsink forward",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes=attributes,
        links=links,
    ) as span:
        yield span


def _job_of_log_subject(subject: str) -> str:
    # stasis.logs.<job_id>.<run_id>.<step>
    parts = subject.split(".")
    return parts[2] if len(parts) > 2 else ""
