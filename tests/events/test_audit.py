"""The audit against a real job whose stored stream is then edited by hand.

Each test runs one job through the whole in-process stack, stops the
services, and then deletes, alters or reorders stored messages with the
JetStream API, as someone with access to NATS could.
"""

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from libs.events import connect, subjects
from libs.events.audit import (
    StoredMessage,
    audit_job,
    message_to_line,
    messages_from_lines,
    read_messages,
)
from libs.events.embedded import EmbeddedNats
from libs.events.timeline import render_timeline
from libs.events.types import decode_event, event_tag
from services.cli.client import GatewayClient
from services.cli.main import main
from services.cli.stack import Stack
from tests.conftest import ROOT, TEST_IMAGE, make_config, make_repo

API_KEY = "audit-test-key-0123456789"
PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  flaky:
    type: exec
    scripts: ["test -f marker || (touch marker; exit 1)", "echo ok > out.txt"]
    retry: {{max_attempts: 2, delay: 0}}
    artifacts: ["out.txt"]
  build:
    type: exec
    scripts: ["echo building", "exit 3"]
  report:
    type: post
    when: always
    scripts: ["echo reporting"]
"""


async def run_job(nats_server: EmbeddedNats, tmp_path: Path) -> str:
    """Run one job through a stack with API keys on, stop it, return the job id."""
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": PIPELINE})
    config = make_config(
        tmp_path,
        **{
            "nats.url": nats_server.url,
            "auth.enabled": True,
            "auth.api_keys": [API_KEY],
        },
    )
    stack = Stack(config)
    await stack.start()
    try:
        assert stack.gateway is not None
        async with GatewayClient(stack.gateway.url, API_KEY) as client:
            accepted = await client.submit(
                {"repository": {"url": str(tmp_path / "repo")}}
            )
            [sse async for sse in client.stream(accepted["job_id"])]
    finally:
        # No service may react to the edits below.
        await stack.stop()
    return str(accepted["job_id"])


@pytest.fixture
async def job(
    nats_server: EmbeddedNats, tmp_path: Path, test_image: str
) -> AsyncIterator[tuple[Client, str]]:
    """A NATS client and the id of a finished job on `nats_server`."""
    job_id = await run_job(nats_server, tmp_path)
    client = await connect(nats_server.url, "audit-test")
    yield client, job_id
    await client.close()


async def rewrite(client: Client, job_id: str, data: list[bytes]) -> list[int]:
    """Purge the job's subject and store `data` again; return the new sequences.

    The NATS headers (message id, expected sequence) are left off, because the
    duplicate window still remembers the ids and the old sequences are gone.
    """
    js = client.jetstream()
    subject = subjects.job_subject(job_id)
    await js.purge_stream(subjects.JOBS_STREAM, subject=subject)
    seqs = []
    for payload in data:
        ack = await js.publish(subject, payload, stream=subjects.JOBS_STREAM)
        seqs.append(ack.seq)
    return seqs


def index_of(messages: list[StoredMessage], tag: str, text: bytes = b"") -> int:
    """Return the index of the first message of type `tag` that contains `text`."""
    for index, message in enumerate(messages):
        if event_tag(decode_event(message.data)) == tag and text in message.data:
            return index
    raise AssertionError(f"no {tag} event containing {text!r}")


def label(messages: list[StoredMessage], index: int) -> str:
    tag = event_tag(decode_event(messages[index].data))
    return f"seq {messages[index].seq} ({tag})"


async def test_audit_intact_job_timeline(job: tuple[Client, str]) -> None:
    client, job_id = job

    report = await audit_job(client, job_id)
    text = render_timeline(report)

    assert report.verdict == "intact"
    assert report.findings == []
    assert report.rejected == []
    assert report.state is not None
    assert report.state.status == "failed"
    assert report.state.submitted_by
    assert f"by key {report.state.submitted_by}" in text
    assert "attempts 1 on " in text
    assert "step flaky: succeeded, exit 0, attempts 2" in text
    assert "step build: failed, exit 3, attempts 1" in text
    assert "artifact flaky.tar.gz: sha256 " in text
    assert f"chain intact: {len(report.messages)} events" in text


async def test_audit_names_deleted_event(job: tuple[Client, str]) -> None:
    client, job_id = job
    messages = await read_messages(client, job_id)
    middle = index_of(messages, "source.checked_out")
    removed = messages[middle].seq

    await client.jetstream().delete_msg(subjects.JOBS_STREAM, removed)
    report = await audit_job(client, job_id)

    assert report.verdict == "tampered"
    assert [f.kind for f in report.findings] == ["missing"]
    finding = report.findings[0]
    assert finding.seq == messages[middle + 1].seq
    assert f"sequence(s) {removed} were deleted" in finding.message
    assert label(messages, middle - 1) in finding.message


async def test_audit_names_altered_event(job: tuple[Client, str]) -> None:
    client, job_id = job
    messages = await read_messages(client, job_id)
    target = index_of(messages, "step.finished", b'"step":"build"')
    data = [m.data for m in messages]
    assert b'"exit_code":3' in data[target]
    data[target] = data[target].replace(b'"exit_code":3', b'"exit_code":0')

    seqs = await rewrite(client, job_id, data)
    report = await audit_job(client, job_id)

    assert report.verdict == "tampered"
    assert [f.kind for f in report.findings] == ["altered"]
    assert report.findings[0].seq == seqs[target]
    assert report.findings[0].event_type == "step.finished"
    assert f"seq {seqs[target]} (step.finished) was altered" in (
        report.findings[0].message
    )


async def test_audit_names_reordered_events(job: tuple[Client, str]) -> None:
    client, job_id = job
    messages = await read_messages(client, job_id)
    first = index_of(messages, "source.checked_out")
    data = [m.data for m in messages]
    data[first], data[first + 1] = data[first + 1], data[first]

    seqs = await rewrite(client, job_id, data)
    report = await audit_job(client, job_id)

    assert report.verdict == "tampered"
    reordered = {f.seq: f for f in report.findings if f.kind == "reordered"}
    assert seqs[first] in reordered
    assert seqs[first + 1] in reordered
    assert reordered[seqs[first]].event_type == "pipeline.loaded"
    assert reordered[seqs[first + 1]].event_type == "source.checked_out"
    assert all(f.kind == "reordered" for f in report.findings)


async def test_audit_unchanged_rewrite_is_intact(job: tuple[Client, str]) -> None:
    client, job_id = job
    messages = await read_messages(client, job_id)

    await rewrite(client, job_id, [m.data for m in messages])
    report = await audit_job(client, job_id)

    assert report.verdict == "intact"


async def stasis(nats_url: str, *args: str) -> tuple[int, str, str]:
    """Run the `stasis` command line with `args`; return code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli.main",
        *args,
        cwd=ROOT,
        env={**os.environ, "STASIS_NATS_URL": nats_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_audit_and_events(
    job: tuple[Client, str], nats_server: EmbeddedNats
) -> None:
    client, job_id = job
    messages = await read_messages(client, job_id)

    code, out, err = await stasis(nats_server.url, "audit", job_id)
    assert code == 0, err
    assert "chain intact" in out

    code, out, err = await stasis(nats_server.url, "events", job_id, "--json")
    assert code == 0, err
    assert messages_from_lines(out.splitlines()) == messages
    assert out.splitlines()[0] == message_to_line(messages[0])

    code, out, err = await stasis(
        nats_server.url, "audit", "--all", "--since", "2000-01-01"
    )
    assert code == 0, err
    assert "intact 1, tampered 0, unreadable 0" in out

    middle = index_of(messages, "pipeline.loaded")
    await client.jetstream().delete_msg(subjects.JOBS_STREAM, messages[middle].seq)
    code, out, err = await stasis(nats_server.url, "audit", job_id)
    assert code == 1
    assert label(messages, middle + 1) in err
    assert "TAMPERED (missing)" in out

    code, out, err = await stasis(
        nats_server.url, "audit", "--all", "--since", "2000-01-01"
    )
    assert code == 1
    assert "intact 0, tampered 1, unreadable 0" in out


async def test_cli_events_follow_prints_live(
    job: tuple[Client, str], nats_server: EmbeddedNats
) -> None:
    _, job_id = job
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli.main",
        "events",
        job_id,
        "--follow",
        cwd=ROOT,
        env={**os.environ, "STASIS_NATS_URL": nats_server.url},
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        first = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        assert b"job.submitted" in first
    finally:
        process.terminate()
        await process.wait()


def test_cli_audit_needs_nats_url() -> None:
    env_url = os.environ.pop("STASIS_NATS_URL", None)
    try:
        assert main(["audit", "01jobjobjobjobjobjobjobjob"]) == 2
    finally:
        if env_url is not None:
            os.environ["STASIS_NATS_URL"] = env_url
