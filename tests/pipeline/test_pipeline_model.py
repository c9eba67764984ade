"""Tests of the Pipeline model: step order, retry timing, triggers and environments."""

import math

import pytest

from libs.pipeline import PREDEFINED_VARIABLES, Retry, Step, load_pipeline

ORDER_FILE = """\
image: a
steps:
  deploy: {type: post, scripts: [x]}
  build: {scripts: [x]}
  prepare: {type: pre, scripts: [x]}
  test: {type: exec, scripts: [x]}
  notify: {type: post, scripts: [x]}
  fetch: {type: pre, scripts: [x]}
"""


def test_ordered_steps_groups_by_type_in_file_order() -> None:
    pipeline = load_pipeline(ORDER_FILE)

    names = [step.name for step in pipeline.ordered_steps()]

    assert names == ["prepare", "fetch", "build", "test", "deploy", "notify"]
    assert pipeline.steps[0].name == "deploy"


@pytest.mark.parametrize(
    ("retry", "delays"),
    [
        (Retry(max_attempts=4, delay=2.0, backoff=2.0), [2.0, 4.0, 8.0]),
        (Retry(max_attempts=3, delay=5.0), [5.0, 5.0]),
        (
            Retry(max_attempts=5, delay=10.0, backoff=3.0, max_delay=60.0),
            [10.0, 30.0, 60.0, 60.0],
        ),
        (Retry(max_attempts=3, delay=0.0, backoff=10.0), [0.0, 0.0]),
    ],
)
def test_retry_delay_before_attempts(retry: Retry, delays: list[float]) -> None:
    actual = [retry.delay_before(n) for n in range(2, retry.max_attempts + 1)]

    assert actual == delays


def test_retry_delay_never_overflows() -> None:
    retry = Retry(delay=1.0, backoff=10.0, max_delay=300.0)

    assert retry.delay_before(10_000) == 300.0
    assert math.isfinite(retry.delay_before(400))


@pytest.mark.parametrize("attempt", [0, 1])
def test_retry_first_attempt_has_no_delay(attempt: int) -> None:
    with pytest.raises(ValueError, match=rf"invalid attempt {attempt}: only attempts"):
        Retry().delay_before(attempt)


TRIGGERS = """\
image: a
steps: {s: {scripts: [x]}}
on:
  push: [main, "release/*"]
  tag: ["v*"]
  manual: false
"""


@pytest.mark.parametrize(
    ("kind", "branch", "tag", "expected"),
    [
        ("push", "main", None, (True, "")),
        ("push", "release/1.0", None, (True, "")),
        (
            "push",
            "release/1.0/rc",
            None,
            (
                False,
                "branch 'release/1.0/rc' matches none of push: ['main', 'release/*']",
            ),
        ),
        (
            "push",
            "dev",
            None,
            (False, "branch 'dev' matches none of push: ['main', 'release/*']"),
        ),
        ("tag", None, "v1.2", (True, "")),
        ("tag", None, "nightly", (False, "tag 'nightly' matches none of tag: ['v*']")),
        (
            "manual",
            None,
            None,
            (False, "manual submissions are disabled by on: manual: false"),
        ),
    ],
)
def test_match_trigger(
    kind: str, branch: str | None, tag: str | None, expected: tuple[bool, str]
) -> None:
    pipeline = load_pipeline(TRIGGERS)

    assert pipeline.match_trigger(kind, branch=branch, tag=tag) == expected


def test_without_on_everything_runs() -> None:
    pipeline = load_pipeline("image: a\nsteps: {s: {scripts: [x]}}\n")

    assert pipeline.match_trigger("push", branch="any/branch") == (True, "")
    assert pipeline.match_trigger("tag", tag="anything") == (True, "")
    assert pipeline.match_trigger("manual") == (True, "")


def test_empty_on_runs_branches_not_tags() -> None:
    pipeline = load_pipeline("image: a\nsteps: {s: {scripts: [x]}}\non: {}\n")

    assert pipeline.match_trigger("push", branch="feature/x") == (True, "")
    assert pipeline.match_trigger("manual") == (True, "")
    assert pipeline.match_trigger("tag", tag="v1") == (
        False,
        "tag 'v1' does not run because on: lists no tag globs",
    )


def test_empty_push_list_runs_no_push() -> None:
    pipeline = load_pipeline("image: a\nsteps: {s: {scripts: [x]}}\non: {push: []}\n")

    matched, reason = pipeline.match_trigger("push", branch="main")

    assert matched is False
    assert reason == "branch 'main' does not run because on: lists no push globs"


def test_match_trigger_rejects_unknown_kind() -> None:
    pipeline = load_pipeline(TRIGGERS)

    with pytest.raises(ValueError, match="invalid trigger kind 'schedule'"):
        pipeline.match_trigger("schedule")
    with pytest.raises(ValueError, match="missing branch for a push submission"):
        pipeline.match_trigger("push")


ENV_FILE = """\
image: a
envs: {SHARED: job, JOB_ONLY: job, OVERRIDDEN: job}
steps:
  s:
    scripts: [x]
    envs: {SHARED: step, STEP_ONLY: step, OVERRIDDEN: step}
  other: {scripts: [x]}
"""


def test_step_env_precedence() -> None:
    pipeline = load_pipeline(ENV_FILE)
    step = pipeline.steps[0]
    predefined = {"CI": "true", "CI_BRANCH": "main", "CI_STEP_NAME": "s"}
    submitted = {"OVERRIDDEN": "submitted", "CI_BRANCH": "spoofed", "EXTRA": "1"}

    env = pipeline.step_env(step, predefined, submitted)

    assert env == {
        "SHARED": "step",
        "JOB_ONLY": "job",
        "STEP_ONLY": "step",
        "OVERRIDDEN": "submitted",
        "EXTRA": "1",
        "CI": "true",
        "CI_BRANCH": "main",
        "CI_STEP_NAME": "s",
    }


def test_step_env_of_step_without_envs() -> None:
    pipeline = load_pipeline(ENV_FILE)

    env = pipeline.step_env(pipeline.steps[1], {}, {})

    assert env == {"SHARED": "job", "JOB_ONLY": "job", "OVERRIDDEN": "job"}


def test_predefined_variables_listed() -> None:
    assert PREDEFINED_VARIABLES == (
        "CI",
        "CI_JOB_ID",
        "CI_RUN_ID",
        "CI_COMMIT_SHA",
        "CI_BRANCH",
        "CI_TAG",
        "CI_REPOSITORY_URL",
        "CI_WORKSPACE",
        "CI_STEP_NAME",
        "CI_STEP_ATTEMPT",
        "CI_TRIGGER",
    )


@pytest.mark.parametrize("name", PREDEFINED_VARIABLES)
def test_predefined_variables_cannot_be_set_in_file(name: str) -> None:
    with pytest.raises(ValueError, match=f"variable '{name}' is set by the runner"):
        load_pipeline(
            f"image: a\nenvs: {{{name}: x}}\nsteps: {{s: {{scripts: [x]}}}}\n"
        )


@pytest.mark.parametrize(
    ("when", "run_failed", "expected"),
    [
        ("on_success", False, True),
        ("on_success", True, False),
        ("on_failure", False, False),
        ("on_failure", True, True),
        ("always", False, True),
        ("always", True, True),
    ],
)
def test_should_run_follows_when(when: str, run_failed: bool, expected: bool) -> None:
    step = Step(name="s", scripts=("x",), when=when)  # type: ignore[arg-type]

    assert step.should_run(run_failed=run_failed, variables={}) is expected


def test_should_run_checks_if_after_when() -> None:
    step = Step(name="s", scripts=("x",), when="always", if_="CI_BRANCH == 'main'")

    assert step.should_run(run_failed=True, variables={"CI_BRANCH": "main"}) is True
    assert step.should_run(run_failed=True, variables={"CI_BRANCH": "dev"}) is False


def test_if_false_skips_successful_run() -> None:
    step = Step(name="s", scripts=("x",), if_="CI_TAG =~ 'v*'")

    assert step.should_run(run_failed=False, variables={"CI_TAG": ""}) is False
    assert step.should_run(run_failed=False, variables={"CI_TAG": "v2"}) is True
