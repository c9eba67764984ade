"""Metrics, traces and JSON log lines of a real job through every service."""

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from libs.telemetry.logformat import JsonFormatter
from libs.telemetry.tracing import capture_spans
from services.cli.client import GatewayClient
from services.cli.stack import Stack
from tests.conftest import TEST_IMAGE, make_repo, wait_until

PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  compile:
    type: pre
    scripts: ["echo compiling", "echo result > out.txt"]
    artifacts: ["out.txt"]
  check:
    type: exec
    scripts: ["echo checking"]
"""
SECRET = "telemetry-secret-value-51x"


async def run_job(stack: Stack, tmp_path: Path) -> tuple[str, str]:
    """Submit the two-step pipeline, wait for its end; return job and run ids."""
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": PIPELINE})
    assert stack.gateway is not None
    async with GatewayClient(stack.gateway.url) as client:
        accepted = await client.submit(
            {
                "repository": {"url": str(tmp_path / "repo")},
                "secrets": {"DEPLOY_TOKEN": SECRET},
            }
        )
        events = [sse async for sse in client.stream(accepted["job_id"])]
    assert json.loads(events[-1].data)["status"] == "succeeded"
    return accepted["job_id"], accepted["run_id"]


async def scrape(stack: Stack) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Return every sample of the gateway's `/metrics` by sample name."""
    assert stack.gateway is not None
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{stack.gateway.url}/metrics") as response,
    ):
        assert response.status == 200
        text = await response.text()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    """Return the sum of the samples of `name` whose labels include `labels`."""
    return sum(
        v
        for sample_labels, v in samples.get(name, [])
        if labels.items() <= sample_labels.items()
    )


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every log line of the process, formatted as JSON, in a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.docker
async def test_metrics_move_after_job(stack: Stack, tmp_path: Path) -> None:
    job_id, run_id = await run_job(stack, tmp_path)

    async def logsink_caught_up() -> bool:
        return value(await scrape(stack), "stasis_logsink_persisted_bytes_total") > 0

    await wait_until(logsink_caught_up, timeout=15)
    samples = await scrape(stack)

    assert value(samples, "stasis_jobs_submitted_total") == 1
    assert value(samples, "stasis_runs_finished_total", outcome="succeeded") == 1
    assert value(samples, "stasis_steps_finished_total", outcome="succeeded") == 2
    assert value(samples, "stasis_step_duration_seconds_count") == 2
    assert value(samples, "stasis_run_duration_seconds_count") == 1
    assert value(samples, "stasis_queue_wait_seconds_count") == 1
    assert value(samples, "stasis_runs_dispatched_total") == 1
    assert value(samples, "stasis_queue_depth") == 0
    assert value(samples, "stasis_log_bytes_total") > 0
    assert value(samples, "stasis_artifact_bytes_total") > 0
    assert value(samples, "stasis_dispatch_redeliveries_total") == 0
    assert value(samples, "stasis_executor_slots_busy") == 0
    assert value(samples, "stasis_executor_slots_free") == 2
    submits = value(
        samples,
        "stasis_http_requests_total",
        method="POST",
        route="/api/v1/jobs",
        status="202",
    )
    assert submits == 1
    streams = value(
        samples, "stasis_http_requests_total", route="/api/v1/jobs/{job_id}/stream"
    )
    assert streams == 1
    services = {
        labels["service"] for labels, _ in samples["stasis_nats_reconnects_total"]
    }
    assert services == {"gateway", "scheduler", "executor", "logsink"}

    label_values = {
        v
        for series in samples.values()
        for labels, _ in series
        for v in labels.values()
    }
    assert not [v for v in label_values if job_id in v or run_id in v]
    assert not [v for v in label_values if "compile" in v or "repo" in v]


@pytest.mark.docker
async def test_one_trace_per_job(stack: Stack, tmp_path: Path) -> None:
    with capture_spans() as exporter:
        job_id, run_id = await run_job(stack, tmp_path)

        def executor_span_ended() -> bool:
            names = {span.name for span in exporter.get_finished_spans()}
            return "executor run" in names

        await wait_until(executor_span_ended, timeout=15)
        spans = [
            span
            for span in exporter.get_finished_spans()
            if span.attributes and span.attributes.get("stasis.job_id") == job_id
        ]

    by_name: dict[str, list[Any]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (submit,) = by_name["POST /api/v1/jobs"]
    (queue,) = by_name["scheduler queue"]
    (run,) = by_name["executor run"]
    (clone,) = by_name["clone"]
    steps = {span.attributes["stasis.step"]: span for span in by_name["step"]}
    artifacts = by_name["artifact upload"]

    trace_id = submit.context.trace_id
    job_spans = [queue, run, clone, *steps.values(), *artifacts]
    assert {span.context.trace_id for span in job_spans} == {trace_id}
    assert queue.parent.span_id == submit.context.span_id
    assert run.parent.span_id == queue.context.span_id
    assert clone.parent.span_id == run.context.span_id
    assert set(steps) == {"compile", "check"}
    assert steps["compile"].attributes["stasis.outcome"] == "succeeded"
    assert steps["compile"].attributes["stasis.run_id"] == run_id
    assert steps["check"].parent.span_id == run.context.span_id
    assert [span.attributes["stasis.step"] for span in artifacts] == ["compile"]
    assert artifacts[0].parent.span_id == steps["compile"].context.span_id


@pytest.mark.docker
async def test_json_log_lines_carry_ids(
    stack: Stack, tmp_path: Path, json_log: io.StringIO
) -> None:
    job_id, run_id = await run_job(stack, tmp_path)

    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    # aiohttp writes its access line after the request's context has ended.
    about_job = [
        line
        for line in lines
        if job_id in line["message"] and line["logger"] != "aiohttp.access"
    ]
    assert about_job
    assert all(line.get("job_id") == job_id for line in about_job)
    finished = [line for line in about_job if "finished: succeeded" in line["message"]]
    assert finished[0]["run_id"] == run_id
    assert finished[0]["trace_id"]
    step_lines = [line for line in lines if line.get("step") == "check"]
    assert step_lines
    assert all(line["job_id"] == job_id for line in step_lines)
    assert SECRET not in json_log.getvalue()
