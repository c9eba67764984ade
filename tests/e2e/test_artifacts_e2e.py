"""A pipeline's artifacts listed and downloaded through the API, on both stores."""

import asyncio
import hashlib
import io
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from libs.events.embedded import EmbeddedNats
from services.cli.client import GatewayClient
from services.cli.stack import Stack
from services.gateway.retention import remove_expired
from tests.conftest import TEST_IMAGE, make_config, make_repo
from tests.s3server import MotoS3Server

PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  build:
    type: exec
    scripts:
      - mkdir -p dist/sub empty
      - echo hello > dist/index.html
      - echo deep > dist/sub/deep.txt
      - printf '#!/bin/sh\\necho run\\n' > dist/run.sh && chmod 755 dist/run.sh
      - ln -s /etc/hostname dist/escape
    artifacts: ["dist/**/*", "nothing-*.txt"]
"""


@pytest.fixture(params=["local", "s3"])
async def artifact_stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    test_image: str,
    nats_server: EmbeddedNats,
) -> AsyncIterator[Stack]:
    settings = {"nats.url": nats_server.url}
    if request.param == "s3":
        server: MotoS3Server = request.getfixturevalue("s3_server")
        settings |= {
            "artifacts.storage_type": "s3",
            "artifacts.bucket": request.getfixturevalue("s3_bucket"),
            "artifacts.endpoint_url": server.endpoint_url,
            "artifacts.prefix": "ci",
        }
    stack = Stack(make_config(tmp_path, **settings))
    await stack.start()
    yield stack
    await stack.stop()


async def test_artifacts_listed_and_downloaded(
    artifact_stack: Stack, tmp_path: Path
) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": PIPELINE})
    assert artifact_stack.gateway is not None
    base = artifact_stack.gateway.url
    async with GatewayClient(base) as client:
        accepted = await client.submit({"repository": {"url": str(tmp_path / "repo")}})
        job_id = accepted["job_id"]
        async for _ in client.stream(job_id):
            pass
        listing = await client.request("GET", f"/api/v1/jobs/{job_id}/artifacts")
        job = await client.request("GET", f"/api/v1/jobs/{job_id}")

    assert job["status"] == "succeeded"
    [artifact] = listing["artifacts"]
    assert artifact["name"] == "build.tar.gz"
    assert any("nothing-*.txt" in w for w in listing["warnings"])
    assert any("escape" in w for w in listing["warnings"])

    async with aiohttp.ClientSession() as session:
        async with session.get(artifact["download"]) as resp:
            body = await resp.read()
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/gzip"
            assert "build.tar.gz" in resp.headers["Content-Disposition"]
        async with session.get(
            artifact["download"], headers={"Range": "bytes=10-19"}
        ) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 10-19/{len(body)}"
            assert await resp.read() == body[10:20]
        async with session.get(
            artifact["download"], headers={"Range": f"bytes={len(body)}-"}
        ) as resp:
            assert resp.status == 416

    assert hashlib.sha256(body).hexdigest() == artifact["sha256"]
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        index = tar.extractfile(members["dist/index.html"])
        assert index is not None
        assert index.read() == b"hello\n"
    assert "dist/sub/deep.txt" in members
    assert members["dist/run.sh"].mode & 0o111
    assert "dist/escape" not in members


async def test_artifact_upload_rejects_traversal(stack: Stack, tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": PIPELINE})
    assert stack.gateway is not None
    async with GatewayClient(stack.gateway.url) as client:
        accepted = await client.submit({"repository": {"url": str(tmp_path / "repo")}})
        job_id = accepted["job_id"]
        async for _ in client.stream(job_id):
            pass
    url = f"{stack.gateway.url}/api/v1/jobs/{job_id}/artifacts"
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url, params={"name": "../../etc/passwd"}, data=b"x"
        ) as resp:
            assert resp.status == 422
            assert "'../../etc/passwd'" in (await resp.json())["detail"]
        async with session.post(
            url, params={"name": "report.txt"}, data=b"hi\n"
        ) as resp:
            assert resp.status == 201
            download = (await resp.json())["download"]
        async with session.get(download) as resp:
            assert await resp.read() == b"hi\n"
    stored = [path.name for path in (tmp_path / "data").rglob("*") if path.is_file()]
    assert "report.txt" in stored
    assert "passwd" not in stored


async def test_retention_removes_and_records(stack: Stack, tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": PIPELINE})
    gateway = stack.gateway
    assert gateway is not None
    async with GatewayClient(gateway.url) as client:
        accepted = await client.submit({"repository": {"url": str(tmp_path / "repo")}})
        job_id = accepted["job_id"]
        async for _ in client.stream(job_id):
            pass
        [artifact] = (await client.request("GET", f"/api/v1/jobs/{job_id}/artifacts"))[
            "artifacts"
        ]
        young = await remove_expired(
            gateway.projection, gateway.store, gateway.js, 3600
        )
        later = datetime.now(UTC) + timedelta(hours=2)
        removed = await remove_expired(
            gateway.projection, gateway.store, gateway.js, 3600, now=later
        )
        events = (await client.request("GET", f"/api/v1/jobs/{job_id}/events"))[
            "events"
        ]
        last_seq = str(events[-1]["seq"])
        listing = await client.request(
            "GET", f"/api/v1/jobs/{job_id}/artifacts", params={"min_seq": last_seq}
        )

    assert young == []
    assert len(removed) == 1
    assert events[-1]["event"]["type"] == "artifact.removed"
    assert events[-1]["event"]["reason"] == "older than artifacts.retention (3600s)"
    assert listing["artifacts"] == []
    async with (
        aiohttp.ClientSession() as session,
        session.get(artifact["download"]) as resp,
    ):
        assert resp.status == 404
    assert not (tmp_path / "data" / "artifacts" / removed[0]).exists()


async def test_cli_lists_and_downloads(stack: Stack, tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": PIPELINE})
    assert stack.gateway is not None
    async with GatewayClient(stack.gateway.url) as client:
        accepted = await client.submit({"repository": {"url": str(tmp_path / "repo")}})
        async for _ in client.stream(accepted["job_id"]):
            pass
    target = tmp_path / "out.tar.gz"
    base = ["--url", stack.gateway.url, "artifacts", accepted["job_id"]]
    listed = await asyncio.to_thread(_run_cli, base)
    fetched = await asyncio.to_thread(
        _run_cli, [*base, "--download", "build.tar.gz", "-o", str(target)]
    )
    missing = await asyncio.to_thread(_run_cli, [*base, "--download", "nope.zip"])

    assert listed.returncode == 0
    assert "build.tar.gz" in listed.stdout
    assert fetched.returncode == 0
    with tarfile.open(target) as tar:
        assert "dist/index.html" in tar.getnames()
    assert missing.returncode == 2
    assert "'nope.zip'" in missing.stderr


def _run_cli(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
