"""Tests of load_pipeline: valid files, every validation error, and the YAML traps."""

import time

import pytest

from libs.pipeline import (
    Pipeline,
    PipelineError,
    PipelineIssue,
    Retry,
    Step,
    Triggers,
    load_pipeline,
)

EXAMPLE = """\
image: gcc:13-bookworm
on:
  push: [main, "release/*"]
envs: {GLOBAL: "1"}
steps:
  setup:   {type: pre,  scripts: ["echo setting up"]}
  build:
    type: exec
    scripts: ["make"]
    envs: {MODE: release}
    working_directory: src
    timeout: 600
    retry: {max_attempts: 3, delay: 2, backoff: 2.0}
    if: "CI_BRANCH == 'main'"
    artifacts: ["dist/**/*", "build-info.txt"]
  cleanup: {type: post, scripts: ["rm -rf tmp/"], when: always}
timeout: 1800
"""

MINIMAL = "image: alpine:3\nsteps:\n  build: {scripts: [make]}\n"


def issues_of(text: str) -> list[PipelineIssue]:
    with pytest.raises(PipelineError) as caught:
        load_pipeline(text)
    return caught.value.issues


def only_issue(text: str) -> PipelineIssue:
    issues = issues_of(text)
    assert len(issues) == 1, issues
    return issues[0]


def test_example_loads_to_expected_structs() -> None:
    expected = Pipeline(
        image="gcc:13-bookworm",
        on=Triggers(push=("main", "release/*"), tag=(), manual=True),
        envs={"GLOBAL": "1"},
        steps=(
            Step(name="setup", type="pre", scripts=("echo setting up",)),
            Step(
                name="build",
                type="exec",
                scripts=("make",),
                envs={"MODE": "release"},
                working_directory="src",
                timeout=600.0,
                retry=Retry(max_attempts=3, delay=2.0, backoff=2.0),
                if_="CI_BRANCH == 'main'",
                artifacts=("dist/**/*", "build-info.txt"),
            ),
            Step(name="cleanup", type="post", scripts=("rm -rf tmp/",), when="always"),
        ),
        timeout=1800.0,
        shell="sh",
    )

    assert load_pipeline(EXAMPLE) == expected


def test_minimal_file_gets_defaults() -> None:
    pipeline = load_pipeline(MINIMAL)

    assert pipeline.on == Triggers(push=None, tag=None, manual=True)
    assert pipeline.envs == {}
    assert pipeline.timeout is None
    assert pipeline.shell == "sh"
    assert pipeline.steps == (Step(name="build", scripts=("make",)),)
    step = pipeline.steps[0]
    assert step.type == "exec"
    assert step.retry == Retry(max_attempts=1, delay=0.0, backoff=1.0, max_delay=300.0)
    assert step.when == "on_success"
    assert step.continue_on_error is False
    assert step.shell is None


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("90", 90.0), ("1.5", 1.5), ("90s", 90.0), ("10m", 600.0), ("1h30m", 5400.0)],
)
def test_durations_accept_numbers_and_units(written: str, seconds: float) -> None:
    step = f"  s: {{scripts: [x], timeout: {written}}}\n"
    text = f"image: a\ntimeout: {written}\nsteps:\n{step}"

    pipeline = load_pipeline(text)

    assert pipeline.timeout == seconds
    assert pipeline.steps[0].timeout == seconds


def test_retry_durations_and_max_delay() -> None:
    text = (
        "image: a\nsteps:\n  s:\n    scripts: [x]\n"
        "    retry: {max_attempts: 10, delay: 10s, backoff: 3, max_delay: 2m}\n"
    )

    retry = load_pipeline(text).steps[0].retry

    assert retry == Retry(max_attempts=10, delay=10.0, backoff=3.0, max_delay=120.0)


@pytest.mark.parametrize(
    ("written", "normalized"),
    [
        ("src", "src"),
        ("./src/", "src"),
        ("a/../b", "b"),
        ("a/./b//c", "a/b/c"),
        (".", None),
        ("a/..", None),
    ],
)
def test_working_directory_is_normalized(written: str, normalized: str | None) -> None:
    text = f"image: a\nsteps:\n  s: {{scripts: [x], working_directory: '{written}'}}\n"

    assert load_pipeline(text).steps[0].working_directory == normalized


def test_step_level_settings() -> None:
    text = (
        "image: a\nshell: bash\nsteps:\n  s:\n    scripts: [x, y]\n"
        "    shell: sh\n    continue_on_error: true\n    when: on_failure\n"
        "    artifacts: [./out/*.log]\n"
    )

    pipeline = load_pipeline(text)
    step = pipeline.steps[0]

    assert pipeline.shell == "bash"
    assert step.shell == "sh"
    assert pipeline.step_shell(step) == "sh"
    assert step.scripts == ("x", "y")
    assert step.continue_on_error is True
    assert step.when == "on_failure"
    assert step.artifacts == ("out/*.log",)


def test_null_optional_values_mean_defaults() -> None:
    text = (
        "image: a\nsteps:\n  s:\n    scripts: [x]\n    timeout: null\n"
        "    retry:\n    if: ~\n    shell:\n    working_directory:\n"
    )

    step = load_pipeline(text).steps[0]

    assert step.timeout is None
    assert step.retry == Retry()
    assert step.if_ is None
    assert step.shell is None
    assert step.working_directory is None


# Each case: file text, then (path, line, column, message) of its only issue.
INVALID_FILES = [
    (
        "image: [a\n",
        (
            "",
            2,
            1,
            "invalid YAML: while parsing a flow sequence, expected ',' or ']', "
            "but got '<stream end>'",
        ),
    ),
    (
        MINIMAL + "step:\n  s: {scripts: [x]}\n",
        ("step", 4, 1, "unknown key 'step'; did you mean 'steps'?"),
    ),
    (
        MINIMAL + "colour: blue\n",
        (
            "colour",
            4,
            1,
            "unknown key 'colour'; use one of envs, image, on, shell, steps, timeout",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], timout: 3}\n",
        ("steps.s.timout", 3, 21, "unknown key 'timout'; did you mean 'timeout'?"),
    ),
    (
        MINIMAL + "image: b\n",
        (
            "image",
            4,
            1,
            "duplicate key 'image', first set on line 1; remove one of them",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], envs: {A: '1', A: '2'}}\n",
        (
            "steps.s.envs.A",
            3,
            36,
            "duplicate key 'A', first set on line 3; remove one of them",
        ),
    ),
    (
        "steps:\n  s: {scripts: [x]}\n",
        (
            "",
            1,
            1,
            "missing required key 'image'; set the container image, e.g. gcc:13",
        ),
    ),
    (
        "image: a\n",
        ("", 1, 1, "missing required key 'steps'; define at least one step"),
    ),
    (
        "image: a\nsteps: {}\n",
        (
            "steps",
            2,
            8,
            "expected at least one step, e.g. build: {scripts: [make]}",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {type: exec}\n",
        ("steps.s", 3, 6, "missing required key 'scripts'; list the commands to run"),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: []}\n",
        ("steps.s.scripts", 3, 16, "expected at least one entry, found an empty list"),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: make}\n",
        ("steps.s.scripts", 3, 16, "expected a list, found the text 'make'"),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], type: build}\n",
        (
            "steps.s.type",
            3,
            27,
            "invalid value 'build': use one of 'pre', 'exec', 'post'",
        ),
    ),
    (
        "image: a\nsteps:\n  _s: {scripts: [x]}\n",
        (
            "steps._s",
            3,
            3,
            "invalid step name '_s': names starting with '_' are "
            "reserved for the runner; rename the step",
        ),
    ),
    (
        "image: a\nsteps:\n  'my step': {scripts: [x]}\n",
        (
            "steps.my step",
            3,
            3,
            "invalid step name 'my step': use 1 to 64 letters, digits, '_' or '-'",
        ),
    ),
    (
        f"image: a\nsteps:\n  {'s' * 65}: {{scripts: [x]}}\n",
        (
            f"steps.{'s' * 65}",
            3,
            3,
            f"invalid step name {'s' * 65!r}: use 1 to 64 letters, digits, '_' or '-'",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], timeout: 0}\n",
        (
            "steps.s.timeout",
            3,
            30,
            "invalid timeout '0': must be more than 0 seconds; "
            "remove the key to use the executor's maximum",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], timeout: -5}\n",
        (
            "steps.s.timeout",
            3,
            30,
            "invalid duration '-5': use a finite number of "
            "seconds that is not negative",
        ),
    ),
    (
        MINIMAL + "timeout: 0s\n",
        (
            "timeout",
            4,
            10,
            "invalid timeout '0s': must be more than 0 seconds; "
            "remove the key to use the executor's maximum",
        ),
    ),
    (
        MINIMAL + "timeout: soon\n",
        (
            "timeout",
            4,
            10,
            "invalid duration 'soon': use seconds or a number with a "
            "unit (ms, s, m, h, d), e.g. '90s', '10m' or '1h30m'",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], working_directory: /src}\n",
        (
            "steps.s.working_directory",
            3,
            40,
            "invalid path '/src': must be relative "
            "to the workspace, e.g. 'src' instead of '/src'",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], working_directory: ..}\n",
        (
            "steps.s.working_directory",
            3,
            40,
            "invalid path '..': it leads outside the workspace; remove the '..' parts",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], working_directory: a/../../b}\n",
        (
            "steps.s.working_directory",
            3,
            40,
            "invalid path 'a/../../b': it leads "
            "outside the workspace; remove the '..' parts",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], artifacts: [ok, ../up]}\n",
        (
            "steps.s.artifacts[1]",
            3,
            37,
            "invalid path '../up': it leads outside the "
            "workspace; remove the '..' parts",
        ),
    ),
    (
        MINIMAL + "shell: zsh\n",
        ("shell", 4, 8, "invalid value 'zsh': use one of 'sh', 'bash'"),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], retry: {max_attempts: 0}}\n",
        ("steps.s.retry.max_attempts", 3, 43, "invalid value 0: must be from 1 to 10"),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], retry: {max_attempts: 11}}\n",
        ("steps.s.retry.max_attempts", 3, 43, "invalid value 11: must be from 1 to 10"),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], retry: {max_attempts: 2.5}}\n",
        (
            "steps.s.retry.max_attempts",
            3,
            43,
            "expected a whole number, found the number 2.5",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], retry: {delay: -1}}\n",
        (
            "steps.s.retry.delay",
            3,
            36,
            "invalid duration '-1': use a finite number "
            "of seconds that is not negative",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], retry: {backoff: 0.5}}\n",
        (
            "steps.s.retry.backoff",
            3,
            38,
            "invalid backoff 0.5: must be at least 1.0, "
            "where 1.0 waits the same delay before every attempt",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], retry: {tries: 3}}\n",
        (
            "steps.s.retry.tries",
            3,
            29,
            "unknown key 'tries'; use one of backoff, delay, max_attempts, max_delay",
        ),
    ),
    (
        MINIMAL + "envs: {9LIVES: x}\n",
        (
            "envs.9LIVES",
            4,
            8,
            "invalid variable name '9LIVES': use letters, digits "
            "and '_', not starting with a digit",
        ),
    ),
    (
        MINIMAL + "envs: {A-B: x}\n",
        (
            "envs.A-B",
            4,
            8,
            "invalid variable name 'A-B': use letters, digits and "
            "'_', not starting with a digit",
        ),
    ),
    (
        MINIMAL + "envs: {CI: x}\n",
        (
            "envs.CI",
            4,
            8,
            "variable 'CI' is set by the runner and cannot be set in "
            "the file; rename it",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], envs: {CI_BRANCH: main}}\n",
        (
            "steps.s.envs.CI_BRANCH",
            3,
            28,
            "variable 'CI_BRANCH' is set by the runner "
            "and cannot be set in the file; rename it",
        ),
    ),
    (
        MINIMAL + "envs: {A: [1, 2]}\n",
        (
            "envs.A",
            4,
            11,
            "expected a text value, found a list; quote it as one string",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], continue_on_error: yes}\n",
        (
            "steps.s.continue_on_error",
            3,
            40,
            "expected true or false, found the text "
            "'yes'; only the lowercase words true and false are booleans here",
        ),
    ),
    (
        MINIMAL + "on: {manual: off}\n",
        (
            "on.manual",
            4,
            14,
            "expected true or false, found the text 'off'; only the "
            "lowercase words true and false are booleans here",
        ),
    ),
    (
        MINIMAL + "on: {push: main}\n",
        ("on.push", 4, 12, "expected a list, found the text 'main'"),
    ),
    (
        MINIMAL + "on: {pull_request: [main]}\n",
        (
            "on.pull_request",
            4,
            6,
            "unknown key 'pull_request'; use one of manual, push, tag",
        ),
    ),
    (
        MINIMAL + "on: yes\n",
        ("on", 4, 5, "expected a mapping, found the text 'yes'"),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], if: \"CI_BRANCH = 'main'\"}\n",
        (
            "steps.s.if",
            3,
            36,
            "invalid if expression: unexpected character '='; use "
            "'==' to compare or '=~' to match a glob "
            "(column 11 of \"CI_BRANCH = 'main'\")",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], if: a && && b}\n",
        (
            "steps.s.if",
            3,
            30,
            "invalid if expression: expected a string, number, "
            "variable or '(', found '&&' (column 6 of 'a && && b')",
        ),
    ),
    (
        "image: a\nsteps:\n  s: {scripts: [x], if: true}\n",
        ("steps.s.if", 3, 25, "expected text, found true"),
    ),
    (
        "image: 'gcc 13'\nsteps:\n  s: {scripts: [x]}\n",
        (
            "image",
            1,
            8,
            "invalid image 'gcc 13': use a reference such as "
            "'gcc:13-bookworm', without spaces",
        ),
    ),
    (
        "- image: a\n",
        (
            "",
            1,
            1,
            "expected a mapping with keys such as image and steps, found a list",
        ),
    ),
    (
        MINIMAL + "cache: !!python/object/apply:os.system [ls]\n",
        (
            "cache",
            4,
            1,
            "unknown key 'cache'; use one of envs, image, on, shell, steps, timeout",
        ),
    ),
]


@pytest.mark.parametrize(("text", "expected"), INVALID_FILES)
def test_invalid_file_reports_issue(
    text: str, expected: tuple[str, int, int, str]
) -> None:
    issue = issues_of(text)[0]

    assert (issue.path, issue.line, issue.column, issue.message) == expected


@pytest.mark.parametrize(("text", "expected"), INVALID_FILES[:-1])
def test_invalid_file_reports_only_that_issue(
    text: str, expected: tuple[str, int, int, str]
) -> None:
    assert len(issues_of(text)) == 1


def test_unsupported_tag_reported_even_under_unknown_key() -> None:
    issues = issues_of(MINIMAL + "cache: !!python/object/apply:os.system [ls]\n")

    assert [issue.message for issue in issues] == [
        "unknown key 'cache'; use one of envs, image, on, shell, steps, timeout",
        "YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not "
        "supported; remove it",
    ]


def test_every_issue_reported_at_once() -> None:
    text = (
        "image: a\nsteps:\n  build:\n    scripts: []\n    timeout: 0\n"
        "  test: {scripts: [x], shell: fish}\ntimeout: -1\n"
    )

    issues = issues_of(text)

    assert [(issue.path, issue.line) for issue in issues] == [
        ("steps.build.scripts", 4),
        ("steps.build.timeout", 5),
        ("steps.test.shell", 6),
        ("timeout", 7),
    ]


def test_error_text_lists_issues_one_per_line() -> None:
    text = "image: a\nsteps:\n  s: {scripts: [], timeout: 0}\n"

    with pytest.raises(PipelineError) as caught:
        load_pipeline(text, source="repo/.stasis-ci.yaml")

    assert str(caught.value).splitlines() == [
        "repo/.stasis-ci.yaml:3:16: steps.s.scripts: expected at least one entry, "
        "found an empty list",
        "repo/.stasis-ci.yaml:3:29: steps.s.timeout: invalid timeout '0': must be "
        "more than 0 seconds; remove the key to use the executor's maximum",
    ]


def test_pipeline_error_is_value_error() -> None:
    with pytest.raises(ValueError, match=r"^\.stasis-ci\.yaml:1:1: missing required"):
        load_pipeline("image: a\n")


@pytest.mark.parametrize("text", ["", "# nothing here\n", "   \n"])
def test_empty_file_rejected(text: str) -> None:
    issue = only_issue(text)

    assert issue == PipelineIssue(
        "", None, None, "the file is empty; set at least image and steps"
    )


def test_syntax_error_of_second_document() -> None:
    issue = only_issue(MINIMAL + "---\nimage: b\n")

    assert (issue.line, issue.column) == (4, 1)
    assert issue.message == (
        "invalid YAML: expected a single document in the stream, "
        "but found another document"
    )


def test_control_character_rejected_with_position() -> None:
    issue = only_issue("image: a\x07\nsteps: {}\n")

    assert (issue.line, issue.column) == (1, 9)
    assert issue.message.startswith("invalid YAML: the control character '\\x07'")


# The YAML 1.1 traps.


def test_on_key_is_trigger_not_boolean() -> None:
    pipeline = load_pipeline(MINIMAL + "on: {push: [main], manual: false}\n")

    assert pipeline.on == Triggers(push=("main",), tag=(), manual=False)


@pytest.mark.parametrize(
    "written",
    [
        "012345",
        "0755",
        "1e3",
        "0x1F",
        "1.50",
        "+1",
        "no",
        "yes",
        "on",
        "off",
        "y",
        "n",
        "NO",
        "True",
        "~",
        "null",
        "2001-12-14",
        "1_000",
        ".inf",
        "'quoted'",
    ],
)
def test_env_value_keeps_source_text(written: str) -> None:
    pipeline = load_pipeline(MINIMAL + f"envs:\n  VALUE: {written}\n")

    assert pipeline.envs == {"VALUE": written.strip("'")}


def test_env_value_true_keeps_text() -> None:
    text = "image: a\nsteps:\n  s: {scripts: [x], envs: {A: true, B: 7, C: ''}}\n"

    assert load_pipeline(text).steps[0].envs == {"A": "true", "B": "7", "C": ""}


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "n", "True"])
def test_yaml11_booleans_are_not_booleans(word: str) -> None:
    issue = only_issue(MINIMAL + f"on: {{manual: {word}}}\n")

    assert issue.path == "on.manual"
    assert issue.message.startswith(f"expected true or false, found the text {word!r}")


def test_octal_looking_timeout_is_decimal() -> None:
    pipeline = load_pipeline(MINIMAL + "timeout: 0755\n")

    assert pipeline.timeout == 755.0


def test_yes_step_name_stays_text() -> None:
    pipeline = load_pipeline("image: a\nsteps:\n  yes: {scripts: [x]}\n")

    assert pipeline.steps[0].name == "yes"


def test_billion_laughs_rejected_fast() -> None:
    lines = ["lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, 10):
        refs = ", ".join([f"*lol{level - 1}"] * 9)
        lines.append(f"lol{level}: &lol{level} [{refs}]")
    text = "\n".join(lines) + "\nimage: a\nsteps:\n  s: {scripts: *lol9}\n"

    started = time.perf_counter()
    issue = only_issue(text)
    elapsed = time.perf_counter() - started

    assert elapsed < 1.0
    assert issue.message == (
        "the document expands to more than 100000 YAML nodes through its aliases; "
        "reduce the use of aliases"
    )


def test_recursive_alias_rejected() -> None:
    issue = only_issue(MINIMAL + ".loop: &loop [*loop]\n")

    assert issue.path == ".loop[0]"
    assert issue.message == (
        "an alias refers to a node that contains it; "
        "recursive YAML structures are not supported"
    )


def test_deep_nesting_rejected() -> None:
    issue = only_issue(MINIMAL + ".deep: " + "[" * 500 + "]" * 500 + "\n")

    assert issue.message == (
        "invalid YAML: nesting deeper than 64 levels; flatten the document"
    )


def test_deep_nesting_through_aliases_rejected() -> None:
    lines = [".l0: &l0 [[[[[[[[[[x]]]]]]]]]]"]
    lines += [f".l{n}: &l{n} [[[[[[[[[[*l{n - 1}]]]]]]]]]]" for n in range(1, 8)]

    issue = only_issue(MINIMAL + "\n".join(lines) + "\n")

    assert issue.message == (
        "nesting deeper than 64 levels after alias expansion; flatten the document"
    )


def test_oversized_file_rejected() -> None:
    text = MINIMAL + "#" * 1_000_000 + "\n"

    issue = only_issue(text)

    assert issue.message == (
        f"file is {len(text)} characters long, more than the maximum of 1000000; "
        "shorten it"
    )


# Anchors and merge keys.


def test_merge_key_fills_step_defaults() -> None:
    text = (
        ".defaults: &defaults\n  scripts: [make]\n  envs: {A: '1'}\n  timeout: 5m\n"
        "image: a\nsteps:\n  first: {<<: *defaults, type: pre}\n"
        "  second:\n    <<: *defaults\n    envs: {B: '2'}\n"
    )

    first, second = load_pipeline(text).steps

    assert first == Step(
        name="first", type="pre", scripts=("make",), envs={"A": "1"}, timeout=300.0
    )
    assert second == Step(
        name="second", scripts=("make",), envs={"B": "2"}, timeout=300.0
    )


def test_merge_of_unknown_key_reported_where_written() -> None:
    text = (
        ".defaults: &defaults\n  scrips: [make]\n"
        "image: a\nsteps:\n  s: {<<: *defaults, scripts: [x]}\n"
    )

    issue = only_issue(text)

    assert (issue.path, issue.line, issue.column) == ("steps.s.scrips", 2, 3)
    assert issue.message == "unknown key 'scrips'; did you mean 'scripts'?"


def test_steps_keep_file_order() -> None:
    text = "image: a\nsteps:\n" + "".join(
        f"  {name}: {{scripts: [x]}}\n" for name in ("z", "a", "m", "b")
    )

    assert [step.name for step in load_pipeline(text).steps] == ["z", "a", "m", "b"]
