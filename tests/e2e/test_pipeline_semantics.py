"""Each rule of the pipeline language, enforced by the executor on real Docker.

Every job goes through the whole stack (HTTP gateway, scheduler, executor,
logsink on an embedded NATS) and runs its steps in the busybox test image. The
checks read only what the HTTP API returns: the job, its events, its log and
its SSE stream. After each run, no container or volume labelled with its run
id may be left.
"""

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from libs.events.embedded import EmbeddedNats
from services.cli.client import GatewayClient
from services.cli.stack import Stack
from tests.conftest import TEST_IMAGE, make_config, make_repo, wait_until

KILL_GRACE = 2.0
"""`executor.timeouts.kill_grace` of the test config, in seconds."""


@dataclass
class Finished:
    """What the API shows of one finished job."""

    job: dict[str, Any]
    events: list[dict[str, Any]]
    chunks: list[dict[str, Any]]
    log_text: str
    sse_end: dict[str, Any]
    seconds: float
    containers_created: list[str] = field(default_factory=list)

    @property
    def run(self) -> dict[str, Any]:
        return dict(self.job["runs"][-1])

    @property
    def steps(self) -> dict[str, dict[str, Any]]:
        return {step["name"]: step for step in self.run["steps"]}

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e["event"] for e in self.events if e["event"]["type"] == kind]

    def step_log(self, step: str, attempt: int | None = None) -> str:
        return "".join(
            chunk["data"]
            for chunk in self.chunks
            if chunk["step"] == step and attempt in (None, chunk["attempt"])
        )


class Runner:
    """Submits pipelines to one running stack and collects what the API shows."""

    def __init__(self, stack: Stack, docker: aiodocker.Docker, root: Path) -> None:
        assert stack.gateway is not None
        self.url = stack.gateway.url
        self.docker = docker
        self.root = root
        self._repos = 0

    def repo(self, pipeline: str, files: dict[str, str] | None = None) -> Path:
        """Commit `pipeline` (and `files`) to a new repository on branch main."""
        self._repos += 1
        path = self.root / f"repo-{self._repos}"
        make_repo(path, {".stasis-ci.yaml": pipeline, **(files or {})})
        return path

    async def run(
        self,
        repo: Path,
        *,
        env: dict[str, str] | None = None,
        trigger: str = "manual",
        branch: str | None = None,
        cancel_when_running: str | None = None,
        cancels: int = 1,
    ) -> Finished:
        """Submit a job, wait for its end over SSE and check its cleanup."""
        repository: dict[str, str] = {"url": str(repo)}
        if branch is not None:
            repository["branch"] = branch
        body = {"repository": repository, "env": env or {}, "trigger": trigger}
        since = time.time()
        async with GatewayClient(self.url) as client:
            started = time.monotonic()
            accepted = await client.submit(body)
            job_id = accepted["job_id"]
            # Wait until the gateway's projection has the job, or the stream 404s.
            await client.request(
                "GET", f"/api/v1/jobs/{job_id}?min_seq={accepted['seq']}"
            )
            canceller = None
            if cancel_when_running:
                canceller = asyncio.create_task(
                    self._cancel_when_running(
                        client, job_id, cancel_when_running, cancels
                    )
                )
            async with asyncio.timeout(60):
                sse = [event async for event in client.stream(job_id)]
            seconds = time.monotonic() - started
            if canceller is not None:
                await canceller
            path = f"/api/v1/jobs/{job_id}"
            job = await client.request("GET", path)
            events = (await client.request("GET", f"{path}/events"))["events"]
            answer = await client.request("GET", f"{path}/logs?format=json")
            chunks = [entry["chunk"] for entry in answer["chunks"]]
            log_text = await client.request("GET", f"{path}/logs")

        assert sse[-1].event == "end"
        finished = Finished(
            job, events, chunks, log_text, json.loads(sse[-1].data), seconds
        )
        await self._assert_cleaned_up(finished.run["run_id"])
        finished.containers_created = await _containers_created(job_id, since)
        return finished

    async def _cancel_when_running(
        self, client: GatewayClient, job_id: str, step: str, times: int = 1
    ) -> None:
        async def running() -> bool:
            job = await client.request("GET", f"/api/v1/jobs/{job_id}")
            steps = {s["name"]: s for s in job["runs"][-1]["steps"]}
            return step in steps and steps[step]["status"] == "running"

        await wait_until(running, timeout=20)
        for _ in range(times):
            await client.request("DELETE", f"/api/v1/jobs/{job_id}")

    async def _assert_cleaned_up(self, run_id: str) -> None:
        label = {"label": [f"stasis.run_id={run_id}"]}
        containers = await self.docker.containers.list(all=True, filters=label)
        volumes = (await self.docker.volumes.list(filters=label))["Volumes"] or []
        assert [c.id for c in containers] == []
        assert [v["Name"] for v in volumes] == []


async def _containers_created(job_id: str, since: float) -> list[str]:
    """Return the ids of containers Docker created for `job_id` since `since`."""
    process = await asyncio.create_subprocess_exec(
        "docker",
        "events",
        "--since",
        f"{since:.3f}",
        "--until",
        f"{time.time():.3f}",
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--filter",
        f"label=stasis.job_id={job_id}",
        "--format",
        "{{.Actor.ID}}",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode().split()


@pytest.fixture
def runner(stack: Stack, docker: aiodocker.Docker, tmp_path: Path) -> Runner:
    """A runner on the default test stack."""
    return Runner(stack, docker, tmp_path)


@pytest.fixture
async def capped_runner(
    tmp_path: Path,
    test_image: str,
    nats_server: EmbeddedNats,
    docker: aiodocker.Docker,
) -> AsyncIterator[Runner]:
    """A stack whose executor caps steps at 1s and whole runs at 2.5s."""
    config = make_config(
        tmp_path,
        **{
            "nats.url": nats_server.url,
            "executor.timeouts.step": "1s",
            "executor.timeouts.job": "2.5s",
        },
    )
    running = Stack(config)
    await running.start()
    yield Runner(running, docker, tmp_path)
    await running.stop()


def _at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["at"])


def _lines_with(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


ORDER_PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  post1: {{type: post, scripts: ["echo order:post1"]}}
  exec1: {{type: exec, scripts: ["echo order:exec1"]}}
  pre1: {{type: pre, scripts: ["echo order:pre1"]}}
  exec2: {{scripts: ["echo order:exec2"]}}
  pre2: {{type: pre, scripts: ["echo order:pre2"]}}
  post2: {{type: post, scripts: ["echo order:post2"]}}
"""


async def test_step_order_pre_exec_post(runner: Runner) -> None:
    finished = await runner.run(runner.repo(ORDER_PIPELINE))

    expected = ["pre1", "pre2", "exec1", "exec2", "post1", "post2"]
    started = [e["step"] for e in finished.of_type("step.started")]
    assert finished.job["status"] == "succeeded"
    assert [step["name"] for step in finished.run["steps"]] == expected
    assert started == expected
    assert _lines_with(finished.log_text, "order:") == [f"order:{n}" for n in expected]


WHEN_PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  first:
    scripts: ["echo first; $FIRST"]
    timeout: 1
  on_success: {{scripts: ["echo ran:on_success"]}}
  on_failure: {{scripts: ["echo ran:on_failure"], when: on_failure}}
  always: {{scripts: ["echo ran:always"], when: always}}
"""

WHEN_CASES = [
    # (case, FIRST command, cancel, run status, statuses, reason part per skip)
    (
        "success",
        "true",
        False,
        "succeeded",
        {"on_success": "succeeded", "on_failure": "skipped", "always": "succeeded"},
        {"on_failure": "no earlier step failed or timed out"},
    ),
    (
        "failure",
        "exit 3",
        False,
        "failed",
        {"on_success": "skipped", "on_failure": "succeeded", "always": "succeeded"},
        {"on_success": "step 'first' failed"},
    ),
    (
        "timeout",
        "sleep 30",
        False,
        "timed_out",
        {"on_success": "skipped", "on_failure": "succeeded", "always": "succeeded"},
        {"on_success": "step 'first' timed out"},
    ),
    (
        "cancel",
        "sleep 30",
        True,
        "cancelled",
        {"on_success": "skipped", "on_failure": "skipped", "always": "succeeded"},
        {"on_success": "cancelled", "on_failure": "cancelled"},
    ),
]


@pytest.mark.parametrize(
    ("first", "cancel", "status", "statuses", "reasons"),
    [case[1:] for case in WHEN_CASES],
    ids=[case[0] for case in WHEN_CASES],
)
async def test_when_after_outcome(
    runner: Runner,
    first: str,
    cancel: bool,
    status: str,
    statuses: dict[str, str],
    reasons: dict[str, str],
) -> None:
    pipeline = WHEN_PIPELINE
    if cancel:
        pipeline = pipeline.replace("timeout: 1", "timeout: 30")
    finished = await runner.run(
        runner.repo(pipeline),
        env={"FIRST": first},
        cancel_when_running="first" if cancel else None,
    )

    assert finished.job["status"] == status
    assert finished.sse_end["status"] == status
    skipped_events = {
        e["step"]: e for e in finished.of_type("step.finished") if e["attempt"] == 0
    }
    for name, expected in statuses.items():
        assert finished.steps[name]["status"] == expected, name
        ran = f"ran:{name}" in finished.log_text
        assert ran == (expected != "skipped"), name
    for name, part in reasons.items():
        assert skipped_events[name]["outcome"] == "skipped"
        assert part in skipped_events[name]["reason"]
        assert part in finished.steps[name]["reason"]


IF_PIPELINE = f"""
image: {TEST_IMAGE}
envs: {{DEPLOY: "yes"}}
steps:
  deploy:
    if: "DEPLOY == 'yes' && CI_TRIGGER == 'manual'"
    scripts: ["echo ran:deploy"]
  first_attempt:
    if: "CI_STEP_ATTEMPT == 1 && CI_STEP_NAME == 'first_attempt'"
    scripts: ["echo ran:first_attempt"]
"""


@pytest.mark.parametrize(
    ("deploy", "runs"), [("yes", True), ("no", False)], ids=["true", "false"]
)
async def test_if_uses_step_env(runner: Runner, deploy: str, runs: bool) -> None:
    finished = await runner.run(runner.repo(IF_PIPELINE), env={"DEPLOY": deploy})

    step = finished.steps["deploy"]
    assert finished.job["status"] == "succeeded"
    assert finished.steps["first_attempt"]["status"] == "succeeded"
    assert ("ran:deploy" in finished.log_text) == runs
    assert step["status"] == ("succeeded" if runs else "skipped")
    if not runs:
        expression = "DEPLOY == 'yes' && CI_TRIGGER == 'manual'"
        assert step["reason"] == f"if condition {expression!r} is false"


COUNTER = (
    "n=$(cat /workspace/count 2>/dev/null || echo 0); n=$((n + 1)); "
    'echo "$n" > /workspace/count; echo "attempt=$CI_STEP_ATTEMPT count=$n"'
)
RETRY_PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  flaky:
    retry: {{max_attempts: 3, delay: 0.3, backoff: 2}}
    timeout: 1
    scripts:
      - '{COUNTER}'
      - 'eval "$FAIL_HOW"'
  after: {{scripts: ["echo ran:after"]}}
"""

RETRY_CASES = [
    # (case, command failing attempts 1 and 2, outcomes per attempt, run status)
    ("exit", '[ "$n" -ge 3 ]', ["failed", "failed", "succeeded"], "succeeded"),
    ("timeout", '[ "$n" -ge 3 ] || sleep 30', ["timed_out"] * 2 + ["succeeded"], None),
    ("exhausted", "false", ["failed"] * 3, "failed"),
]


@pytest.mark.parametrize(
    ("fail_how", "outcomes", "status"),
    [case[1:] for case in RETRY_CASES],
    ids=[case[0] for case in RETRY_CASES],
)
async def test_retry_attempts(
    runner: Runner, fail_how: str, outcomes: list[str], status: str | None
) -> None:
    finished = await runner.run(runner.repo(RETRY_PIPELINE), env={"FAIL_HOW": fail_how})

    status = status or "succeeded"
    started = [e for e in finished.of_type("step.started") if e["step"] == "flaky"]
    ended = [e for e in finished.of_type("step.finished") if e["step"] == "flaky"]
    assert finished.job["status"] == status
    assert [e["attempt"] for e in started] == [1, 2, 3]
    assert [e["attempt"] for e in ended] == [1, 2, 3]
    assert [e["outcome"] for e in ended] == outcomes
    assert finished.steps["flaky"]["status"] == outcomes[-1]
    assert finished.steps["flaky"]["attempt"] == 3
    for attempt in (1, 2, 3):
        text = finished.step_log("flaky", attempt)
        assert f"attempt={attempt} count={attempt}\n" in text
        assert f"count={attempt + 1}" not in text
    # The waits are delay * backoff ** (attempt - 2): 0.3s, then 0.6s.
    for attempt, delay in ((2, 0.3), (3, 0.6)):
        waited = _at(started[attempt - 1]) - _at(ended[attempt - 2])
        assert waited.total_seconds() >= delay
    assert ("ran:after" in finished.log_text) == (status == "succeeded")


CONTINUE_PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  lint: {{scripts: ["exit 5"], continue_on_error: true}}
  build: {{scripts: ["echo ran:build"]}}
  on_failure: {{scripts: ["echo ran:on_failure"], when: on_failure}}
"""


async def test_continue_on_error_keeps_going(runner: Runner) -> None:
    finished = await runner.run(runner.repo(CONTINUE_PIPELINE))

    assert finished.job["status"] == "succeeded"
    assert finished.steps["lint"]["status"] == "failed"
    assert finished.steps["lint"]["exit_code"] == 5
    assert finished.steps["build"]["status"] == "succeeded"
    assert finished.steps["on_failure"]["status"] == "skipped"
    assert "ran:build" in finished.log_text
    assert "ran:on_failure" not in finished.log_text


TIMEOUT_PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  slow:
    timeout: 1
    scripts: ['eval "$SLOW"']
"""
IGNORES_TERM = "trap '' TERM; sleep 60"
CHILD_REPORTS_TERM = (
    "(set +e; trap 'echo child got TERM; exit 0' TERM; "
    "while true; do sleep 0.1; done) & "
    "sleep 0.3; trap '' TERM; sleep 60"
)
EXITS_ON_TERM = (
    "set +e; trap 'echo got TERM; exit 0' TERM; while true; do sleep 0.1; done"
)

TIMEOUT_CASES = [
    # (case, script, log text, min seconds, max seconds)
    ("ignores-term", IGNORES_TERM, "", 1 + KILL_GRACE, 1 + KILL_GRACE + 3),
    ("child", CHILD_REPORTS_TERM, "child got TERM", 1 + KILL_GRACE, 1 + KILL_GRACE + 3),
    ("exits-on-term", EXITS_ON_TERM, "got TERM", 1, 1 + KILL_GRACE - 0.5),
]


@pytest.mark.parametrize(
    ("script", "text", "least", "most"),
    [case[1:] for case in TIMEOUT_CASES],
    ids=[case[0] for case in TIMEOUT_CASES],
)
async def test_step_timeout_stops_tree(
    runner: Runner, script: str, text: str, least: float, most: float
) -> None:
    finished = await runner.run(runner.repo(TIMEOUT_PIPELINE), env={"SLOW": script})

    step = finished.steps["slow"]
    assert finished.job["status"] == "timed_out"
    assert finished.run["reason"] == "step 'slow' timed out"
    assert step["status"] == "timed_out"
    assert step["reason"] == "timed out after 1s"
    assert least <= step["duration_s"] <= most
    assert text in finished.step_log("slow")


CAPPED_PIPELINE = f"""
image: {TEST_IMAGE}
timeout: 1h
steps:
  one: {{scripts: ['eval "$ONE"'], timeout: 1h}}
  two: {{scripts: ["sleep 0.7"]}}
  three: {{scripts: ["sleep 0.7"]}}
  four: {{scripts: ["sleep 0.7"]}}
  five: {{scripts: ["echo ran:five"]}}
  cleanup: {{scripts: ["echo ran:cleanup"], when: always}}
"""

CAPPED_CASES = [
    # (case, step one's script, the run's reason, the step that timed out)
    ("step-cap", "sleep 30", "step 'one' timed out", "one"),
    # The sleeps add up to more than the 2.5s job cap, which runs out during
    # step three or four, or between them.
    ("job-cap", "sleep 0.7", "the job's time limit ran out", None),
]


@pytest.mark.parametrize(
    ("one", "reason", "step"),
    [case[1:] for case in CAPPED_CASES],
    ids=[case[0] for case in CAPPED_CASES],
)
async def test_executor_caps_timeouts(
    capped_runner: Runner, one: str, reason: str, step: str | None
) -> None:
    finished = await capped_runner.run(
        capped_runner.repo(CAPPED_PIPELINE), env={"ONE": one}
    )

    assert finished.job["status"] == "timed_out"
    assert finished.run["reason"].startswith(reason)
    if step is not None:
        assert finished.steps[step]["status"] == "timed_out"
        assert finished.steps[step]["reason"] == "timed out after 1s"
        assert finished.steps[step]["duration_s"] < 1 + KILL_GRACE
    assert finished.steps["five"]["status"] == "skipped"
    assert finished.steps["cleanup"]["status"] == "succeeded"
    assert "ran:cleanup" in finished.log_text
    assert "ran:five" not in finished.log_text
    assert finished.seconds < 2.5 + 3 * KILL_GRACE + 3


ENV_NAMES = (
    "FROM_JOB JOB_STEP JOB_SUBMIT STEP_SUBMIT ALL CI CI_JOB_ID CI_RUN_ID "
    "CI_COMMIT_SHA CI_BRANCH CI_TAG CI_REPOSITORY_URL CI_WORKSPACE CI_STEP_NAME "
    "CI_STEP_ATTEMPT CI_TRIGGER"
)
SHOW_ENV = f"""
for name in {ENV_NAMES}; do
  eval "value=\\${{$name-unset}}"
  printf 'env:%s=[%s]\\n' "$name" "$value"
done
"""
ENV_PIPELINE = f"""
image: {TEST_IMAGE}
envs: {{FROM_JOB: job, JOB_STEP: job, JOB_SUBMIT: job, ALL: job}}
steps:
  show:
    envs: {{JOB_STEP: step, STEP_SUBMIT: step, ALL: step}}
    scripts: ["sh show-env.sh"]
"""


async def test_env_precedence_and_predefined(runner: Runner) -> None:
    repo = runner.repo(ENV_PIPELINE, {"show-env.sh": SHOW_ENV})
    submitted = {
        "JOB_SUBMIT": "submitted",
        "STEP_SUBMIT": "submitted",
        "ALL": "submitted",
        "CI": "false",
        "CI_JOB_ID": "forged",
    }
    finished = await runner.run(repo, env=submitted, branch="main")

    printed = dict(
        line.removeprefix("env:").split("=", 1)
        for line in _lines_with(finished.log_text, "env:")
    )
    expected = {
        "FROM_JOB": "job",
        "JOB_STEP": "step",
        "JOB_SUBMIT": "submitted",
        "STEP_SUBMIT": "submitted",
        "ALL": "submitted",
        "CI": "true",
        "CI_JOB_ID": finished.job["job_id"],
        "CI_RUN_ID": finished.run["run_id"],
        "CI_COMMIT_SHA": finished.run["commit"],
        "CI_BRANCH": "main",
        "CI_TAG": "",
        "CI_REPOSITORY_URL": str(repo),
        "CI_WORKSPACE": "/workspace",
        "CI_STEP_NAME": "show",
        "CI_STEP_ATTEMPT": "1",
        "CI_TRIGGER": "manual",
    }
    assert finished.job["status"] == "succeeded"
    assert len(finished.run["commit"]) == 40
    for name, value in expected.items():
        assert printed.get(name) == f"[{value}]", name


WORKDIR_PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  in_src: {{working_directory: ./src/, scripts: ["pwd", "cat hello.txt"]}}
  created: {{working_directory: new/deeper, scripts: ["pwd", "ls ../.."]}}
"""


async def test_working_directory_runs_there(runner: Runner) -> None:
    repo = runner.repo(WORKDIR_PIPELINE, {"src/hello.txt": "hello from src\n"})
    finished = await runner.run(repo)

    assert finished.job["status"] == "succeeded"
    assert "/workspace/src\n" in finished.step_log("in_src")
    assert "hello from src\n" in finished.step_log("in_src")
    assert "/workspace/new/deeper\n" in finished.step_log("created")
    assert "src\n" in finished.step_log("created")


@pytest.mark.parametrize("directory", ["../..", "/etc", "a/../../b"])
async def test_working_directory_escape_rejected(
    runner: Runner, directory: str
) -> None:
    pipeline = f"""
image: {TEST_IMAGE}
steps:
  escape:
    working_directory: "{directory}"
    scripts: ["pwd"]
"""
    finished = await runner.run(runner.repo(pipeline))

    reason = finished.run["reason"]
    assert finished.job["status"] == "failed"
    assert reason.startswith("invalid pipeline: .stasis-ci.yaml:5:24: ")
    assert f"steps.escape.working_directory: invalid path {directory!r}" in reason
    assert finished.of_type("step.started") == []
    assert finished.containers_created == []


SHELL_PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  default: {{scripts: ['echo "shell=$0"']}}
  needs_bash:
    shell: bash
    retry: {{max_attempts: 3}}
    scripts: ["echo ran:bash"]
"""


async def test_shell_default_and_missing_bash(runner: Runner) -> None:
    finished = await runner.run(runner.repo(SHELL_PIPELINE))

    step = finished.steps["needs_bash"]
    attempts = [
        e for e in finished.of_type("step.started") if e["step"] == step["name"]
    ]
    assert finished.job["status"] == "failed"
    assert finished.run["reason"] == "step 'needs_bash' failed"
    assert "shell=sh\n" in finished.step_log("default")
    assert step["status"] == "failed"
    assert step["exit_code"] is None
    assert f"image {TEST_IMAGE!r} has no 'bash'" in step["reason"]
    assert "`shell: sh`" in step["reason"]
    assert step["reason"] in finished.step_log("needs_bash")
    assert "ran:bash" not in finished.log_text
    assert len(attempts) == 1


TRIGGER_PIPELINE = f"""
image: {TEST_IMAGE}
on:
  push: [main, "release/*"]
  tag: ["v*"]
  manual: $MANUAL
steps:
  show: {{scripts: ['echo "branch=[$CI_BRANCH] tag=[$CI_TAG] by=$CI_TRIGGER"']}}
"""

TRIGGER_CASES = [
    # (case, manual, trigger, ref, printed line or the skip reason part)
    ("push-match", "true", "push", "main", "branch=[main] tag=[] by=push"),
    ("push-other", "true", "push", "dev", "branch 'dev' matches none of push"),
    ("tag-match", "true", "tag", "v1.0", "branch=[] tag=[v1.0] by=tag"),
    ("tag-other", "true", "tag", "nightly", "tag 'nightly' matches none of tag"),
    ("manual", "true", "manual", None, "branch=[] tag=[] by=manual"),
    ("api", "true", "api", None, "branch=[] tag=[] by=api"),
    ("manual-off", "false", "manual", None, "manual submissions are disabled"),
    ("api-off", "false", "api", None, "manual submissions are disabled"),
]


@pytest.mark.parametrize(
    ("manual", "trigger", "ref", "text"),
    [case[1:] for case in TRIGGER_CASES],
    ids=[case[0] for case in TRIGGER_CASES],
)
async def test_trigger_matches_on(
    runner: Runner, manual: str, trigger: str, ref: str | None, text: str
) -> None:
    repo = runner.repo(TRIGGER_PIPELINE.replace("$MANUAL", manual))
    for name in ("dev", "nightly", "v1.0"):
        command = ["git", "-C", str(repo), "branch" if name == "dev" else "tag", name]
        subprocess.run(command, check=True)
    finished = await runner.run(repo, trigger=trigger, branch=ref)

    if "=" in text:
        assert finished.job["status"] == "succeeded", finished.run["reason"]
        assert f"{text}\n" in finished.step_log("show")
        return
    assert finished.job["status"] == "skipped"
    assert finished.sse_end["status"] == "skipped"
    assert text in finished.run["reason"]
    assert f"this {trigger} submission" in finished.run["reason"]
    assert finished.of_type("pipeline.loaded") == []
    assert finished.containers_created == []


async def test_missing_image_fails_run(runner: Runner) -> None:
    image = "stasis-test/absent:never"
    pipeline = f"image: {image}\nsteps:\n  one: {{scripts: ['true']}}\n"
    finished = await runner.run(runner.repo(pipeline))

    assert finished.job["status"] == "failed"
    assert f"image {image!r} is not present" in finished.run["reason"]
    assert "executor.pull_images is off" in finished.run["reason"]
    assert finished.containers_created == []


INVALID_CASES = [
    # (case, file text, expected start of the reason after "invalid pipeline: ")
    (
        "yaml-syntax",
        f"image: {TEST_IMAGE}\nsteps: [unclosed\n",
        ".stasis-ci.yaml:3:1: invalid YAML:",
    ),
    (
        "unknown-key",
        f"image: {TEST_IMAGE}\nsteps:\n  a:\n    scripts: [ls]\n    timout: 5\n",
        ".stasis-ci.yaml:5:5: steps.a.timout: unknown key 'timout'",
    ),
]


@pytest.mark.parametrize(
    ("text", "start"),
    [case[1:] for case in INVALID_CASES],
    ids=[case[0] for case in INVALID_CASES],
)
async def test_invalid_pipeline_names_position(
    runner: Runner, text: str, start: str
) -> None:
    finished = await runner.run(runner.repo(text))

    assert finished.job["status"] == "failed"
    assert finished.run["reason"].startswith(f"invalid pipeline: {start}")
    assert start in finished.log_text
    assert finished.containers_created == []


DOUBLE_CANCEL_PIPELINE = f"""
image: {TEST_IMAGE}
steps:
  stubborn:
    scripts: ["trap '' TERM; echo waiting; sleep 30"]
  cleanup:
    type: post
    when: always
    scripts: ["echo cleanup ran"]
"""


async def test_second_cancel_skips_cleanup(runner: Runner) -> None:
    finished = await runner.run(
        runner.repo(DOUBLE_CANCEL_PIPELINE), cancel_when_running="stubborn", cancels=2
    )

    assert finished.job["status"] == "cancelled"
    assert finished.steps["stubborn"]["status"] == "cancelled"
    assert finished.steps["cleanup"]["status"] == "skipped"
    assert "second cancel" in finished.steps["cleanup"]["reason"]
    assert "cleanup ran" not in finished.log_text
    assert finished.seconds < 20


REPLAY_PIPELINE = """
image: nope/missing:1
steps:
  build: {scripts: ["echo building"]}
  lint: {scripts: ["echo linting"]}
  deploy: {type: post, when: always, scripts: ["echo deploying"]}
"""


async def test_replay_overrides_image_and_steps(runner: Runner) -> None:
    original = await runner.run(runner.repo(REPLAY_PIPELINE))
    assert original.job["status"] == "failed"
    assert "'nope/missing:1'" in original.run["reason"]

    async with GatewayClient(runner.url) as client:
        replay = await client.request(
            "POST",
            f"/api/v1/jobs/{original.job['job_id']}/replay",
            json={"image": TEST_IMAGE, "steps": ["build"]},
        )
        async for _ in client.stream(replay["job_id"]):
            pass
        job = await client.request("GET", f"/api/v1/jobs/{replay['job_id']}")
        log_text = await client.request("GET", f"/api/v1/jobs/{replay['job_id']}/logs")
        bad = await client.request(
            "POST",
            f"/api/v1/jobs/{original.job['job_id']}/replay",
            json={"image": TEST_IMAGE, "steps": ["nonexistent"]},
        )
        async for _ in client.stream(bad["job_id"]):
            pass
        bad_job = await client.request("GET", f"/api/v1/jobs/{bad['job_id']}")

    steps = {step["name"]: step for step in job["runs"][-1]["steps"]}
    assert job["status"] == "succeeded"
    assert job["replay_of"] == original.job["job_id"]
    assert job["runs"][-1]["image"] == TEST_IMAGE
    assert steps["build"]["status"] == "succeeded"
    assert steps["lint"]["status"] == "skipped"
    assert steps["deploy"]["status"] == "skipped"
    assert "building" in log_text
    assert "linting" not in log_text
    assert bad_job["status"] == "failed"
    assert "['nonexistent']" in bad_job["runs"][-1]["reason"]
