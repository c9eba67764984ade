"""Span export over OTLP/HTTP, the standalone `/metrics` listener, log formats
and NATS reconnect counts, each against real servers on 127.0.0.1."""

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from libs.config.model import TelemetryConfig
from libs.events import connect
from libs.events.embedded import EmbeddedNats
from libs.telemetry.connections import NATS_CONNECTIONS
from libs.telemetry.logformat import (
    JsonFormatter,
    KeyValueFormatter,
    job_log_context,
)
from libs.telemetry.service import ServiceTelemetry
from libs.telemetry.tracing import job_span, otlp_endpoints, span_processors
from services.cli.stack import Stack
from tests.conftest import wait_until


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint on a free loopback port that keeps requests."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _receive(self, request: web.Request) -> web.Response:
        self.content_types.append(request.content_type)
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.requests.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def span_names(self) -> list[str]:
        return [
            span.name
            for request in self.requests
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]


@pytest.fixture
async def otlp_receiver() -> AsyncIterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.mark.docker
async def test_otlp_export_off_by_default(stack: Stack) -> None:
    assert stack.config.telemetry.otlp_endpoint is None
    assert otlp_endpoints() == []
    exporters = [p for p in span_processors() if isinstance(p, BatchSpanProcessor)]
    assert exporters == []


async def test_otlp_export_sends_job_spans(otlp_receiver: OtlpReceiver) -> None:
    config = TelemetryConfig(otlp_endpoint=otlp_receiver.url)
    telemetry = ServiceTelemetry(config, "scheduler")
    await telemetry.start()
    assert otlp_endpoints() == [otlp_receiver.url]
    with job_span("scheduler queue", "job-a", "run-a"):
        pass
    await telemetry.stop()

    assert otlp_endpoints() == []
    assert "scheduler queue" in otlp_receiver.span_names()
    assert set(otlp_receiver.content_types) == {"application/x-protobuf"}
    span = otlp_receiver.requests[0].resource_spans[0].scope_spans[0].spans[0]
    attributes = {a.key: a.value.string_value for a in span.attributes}
    assert attributes["stasis.job_id"] == "job-a"
    assert attributes["stasis.run_id"] == "run-a"


async def test_standalone_metrics_listener() -> None:
    config = TelemetryConfig(metrics_port=0)
    telemetry = ServiceTelemetry(config, "logsink")
    await telemetry.start()
    assert telemetry.metrics_server is not None
    url = f"http://127.0.0.1:{telemetry.metrics_server.port}/metrics"
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            text = await response.text()
    finally:
        await telemetry.stop()
    assert 'stasis_nats_reconnects_total{service="logsink"}' in text


async def test_metrics_listener_off_by_default() -> None:
    telemetry = ServiceTelemetry(TelemetryConfig(), "executor")
    await telemetry.start()
    assert telemetry.metrics_server is None
    await telemetry.stop()


async def test_nats_reconnect_counted(tmp_path: Path) -> None:
    first = EmbeddedNats(tmp_path / "nats")
    await first.start()
    client = await connect(first.url, "stasis-scheduler")
    before = NATS_CONNECTIONS.count("scheduler", "reconnect")
    await first.stop()
    second = EmbeddedNats(tmp_path / "nats", port=first.port)
    await second.start()
    try:
        await wait_until(
            lambda: NATS_CONNECTIONS.count("scheduler", "reconnect") > before,
            timeout=20,
        )
    finally:
        await client.close()
        await second.stop()
    assert NATS_CONNECTIONS.count("scheduler", "disconnect") >= 1


def make_record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "stasis.test", logging.INFO, __file__, 1, message, (), None
    )
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def test_json_line_has_extra_ids() -> None:
    record = make_record("step done", job_id="j1", run_id="r1", step="build")
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "step done"
    assert line["job_id"] == "j1"
    assert line["run_id"] == "r1"
    assert line["step"] == "build"
    assert line["level"] == "INFO"


def test_json_line_takes_ids_from_context() -> None:
    with job_log_context("j2", "r2", "test"):
        line = json.loads(JsonFormatter().format(make_record("inside")))
    assert (line["job_id"], line["run_id"], line["step"]) == ("j2", "r2", "test")
    outside = json.loads(JsonFormatter().format(make_record("outside")))
    assert "job_id" not in outside


def test_json_line_leaves_other_extra_out() -> None:
    record = make_record("login", password="hunter2", job_id="j3")
    assert "hunter2" not in JsonFormatter().format(record)


def test_kv_line_quotes_values_with_spaces() -> None:
    record = make_record('said "hi" there', job_id="j4")
    line = KeyValueFormatter().format(record)
    assert 'message="said \\"hi\\" there"' in line
    assert " job_id=j4" in line
    assert "level=INFO" in line
