"""A logsink killed with SIGKILL while chunks flow loses and repeats nothing."""

import asyncio
from pathlib import Path
from typing import Any

from libs.events.embedded import EmbeddedNats
from tests.conftest import wait_until
from tests.e2e.helpers import ServiceProcess

from .conftest import JOB_ID, RUN_ID, expected_log, publish_chunks

STEPS = ["build", "test", "lint", "docs"]
COUNT = 300


async def test_logsink_killed_mid_stream_writes_once(
    js: Any, nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    logsink = ServiceProcess("logsink", nats_server.url, data_dir)
    await logsink.start()
    run_dir = data_dir / "logs" / JOB_ID / RUN_ID
    try:
        publisher = asyncio.create_task(publish_chunks(js, STEPS, COUNT, pause=0.005))
        await wait_until((run_dir / "build.log").exists, timeout=30)
        for _ in range(2):
            await asyncio.sleep(0.3)
            assert not publisher.done()  # still flowing when the process dies
            logsink.kill()
            await logsink.start()
        await publisher

        for step in STEPS:
            path = run_dir / f"{step}.log"
            expected = expected_log(step, COUNT)
            await wait_until(lambda p=path, e=expected: _size(p) >= len(e), timeout=30)
            assert path.read_text() == expected
    finally:
        logsink.stop()
    assert "Traceback" not in logsink.log_path.read_text()


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0
