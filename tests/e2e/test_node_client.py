"""A NATS client that Stasis did not write follows a running job's events."""

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from services.cli.client import GatewayClient
from services.cli.stack import Stack
from tests.conftest import TEST_IMAGE, make_repo

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  first: {{scripts: ["sleep 1", "echo one"]}}
  second: {{scripts: ["echo two"]}}
"""


@pytest.fixture(scope="session")
def node() -> str:
    """The node binary, with the test client's packages installed."""
    binary = shutil.which("node")
    if binary is None or not (NODE_DIR / "node_modules" / "nats").is_dir():
        pytest.fail(
            "node or the test client's packages are missing; scripts/setup.sh "
            "installs them (npm ci in tests/node)"
        )
    return binary


async def test_node_client_follows_and_validates(
    stack: Stack, tmp_path: Path, node: str
) -> None:
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": PIPELINE})
    assert stack.gateway is not None
    async with GatewayClient(stack.gateway.url) as client:
        schema = await client.request("GET", "/api/v1/schemas/events.json")
        schema_file = tmp_path / "events.schema.json"
        schema_file.write_text(json.dumps(schema))
        accepted = await client.submit({"repository": {"url": str(tmp_path / "repo")}})
        follower = await asyncio.create_subprocess_exec(
            node,
            str(NODE_DIR / "follow_job.mjs"),
            stack.nats_url,
            accepted["job_id"],
            str(schema_file),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(follower.communicate(), 90)

    assert follower.returncode == 0, stderr.decode()
    lines = [json.loads(line) for line in stdout.decode().splitlines()]
    invalid = [line for line in lines if not line["valid"]]
    assert invalid == []
    types = [line["type"] for line in lines]
    expected = [
        "job.submitted",
        "job.queued",
        "run.started",
        "source.checked_out",
        "pipeline.loaded",
        "step.started",
        "step.finished",
        "step.started",
        "step.finished",
        "run.finished",
    ]
    # Scheduling may add its own events in between; these must come in order.
    assert [kind for kind in types if kind in expected] == expected
    assert types[-1] == "run.finished"
