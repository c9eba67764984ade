"""Bad input ends the job failed with a reason that names the value and the fix."""

from pathlib import Path

import pytest

from services.cli.client import GatewayClient
from services.cli.stack import Stack
from tests.conftest import TEST_IMAGE, make_repo

MISSING_IMAGE = 'image: nope/missing:1\nsteps:\n  a: {scripts: ["true"]}\n'


async def _run(stack: Stack, repository: str) -> dict:
    assert stack.gateway is not None
    async with GatewayClient(stack.gateway.url) as client:
        accepted = await client.submit({"repository": {"url": repository}})
        async for _ in client.stream(accepted["job_id"]):
            pass
        job: dict = await client.request("GET", f"/api/v1/jobs/{accepted['job_id']}")
        return job


@pytest.mark.parametrize(
    ("files", "reason_parts"),
    [
        ({"README": "no pipeline here\n"}, ["has no .stasis-ci.yaml", "add one"]),
        (
            {".stasis-ci.yaml": "image: x\nsteps:\n  a: [unclosed\n"},
            ["invalid pipeline", ".stasis-ci.yaml:"],
        ),
        (
            {".stasis-ci.yaml": MISSING_IMAGE},
            ["'nope/missing:1'"],
        ),
    ],
)
async def test_unusable_repository_fails_with_reason(
    stack: Stack, tmp_path: Path, files: dict[str, str], reason_parts: list[str]
) -> None:
    make_repo(tmp_path / "repo", files)
    job = await _run(stack, str(tmp_path / "repo"))
    run = job["runs"][-1]
    assert job["status"] == "failed"
    for part in reason_parts:
        assert part in run["reason"]


async def test_clone_failure_names_the_url(stack: Stack, tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    job = await _run(stack, str(missing))
    reason = job["runs"][-1]["reason"]
    assert job["status"] == "failed"
    assert reason.startswith("clone failed")
    assert "does-not-exist" in reason


async def test_unknown_job_is_404_problem(stack: Stack) -> None:
    assert stack.gateway is not None
    async with GatewayClient(stack.gateway.url) as client:
        with pytest.raises(Exception, match="no job 'nope'"):
            await client.request("GET", "/api/v1/jobs/nope")


async def test_yaml_error_reports_line_and_column(stack: Stack, tmp_path: Path) -> None:
    text = f"image: {TEST_IMAGE}\nsteps:\n  a:\n    scripts: [echo]\n    tiemout: 5\n"
    make_repo(tmp_path / "repo", {".stasis-ci.yaml": text})
    job = await _run(stack, str(tmp_path / "repo"))
    reason = job["runs"][-1]["reason"]
    assert ".stasis-ci.yaml:5:5" in reason
    assert "timeout" in reason
