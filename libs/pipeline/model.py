"""The typed pipeline: frozen Structs that the loader returns and the executor reads."""

from collections.abc import Mapping
from typing import Literal

import msgspec

from .expressions import compile_expression
from .globs import glob_match

StepType = Literal["pre", "exec", "post"]
When = Literal["on_success", "on_failure", "always"]
Shell = Literal["sh", "bash"]
TriggerKind = Literal["push", "tag", "manual"]

PREDEFINED_VARIABLES = (
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
"""Variables the executor sets in every step. The file cannot set `CI` or `CI_*`."""

_STEP_TYPE_ORDER: dict[StepType, int] = {"pre": 0, "exec": 1, "post": 2}


class Retry(msgspec.Struct, frozen=True, kw_only=True):
    """How often a failed step runs again, and how long the executor waits between.

    Durations are in seconds.
    """

    max_attempts: int = 1
    delay: float = 0.0
    backoff: float = 1.0
    max_delay: float = 300.0

    def delay_before(self, attempt: int) -> float:
        """Return the seconds to wait before `attempt` (2 or more).

        The wait is `delay * backoff ** (attempt - 2)`, capped at `max_delay`.
        """
        if attempt < 2:
            raise ValueError(
                f"invalid attempt {attempt!r}: only attempts from 2 on wait"
            )
        if self.delay == 0:
            return 0.0
        try:
            wait = self.delay * self.backoff ** (attempt - 2)
        except OverflowError:
            return self.max_delay
        return min(wait, self.max_delay)


class Triggers(msgspec.Struct, frozen=True, kw_only=True):
    """The `on` key: which submissions run the pipeline.

    None in `push` or `tag` means every branch or tag. The defaults are what a
    file without `on` gets: every submission runs.
    """

    push: tuple[str, ...] | None = None
    tag: tuple[str, ...] | None = None
    manual: bool = True


class Step(msgspec.Struct, frozen=True, kw_only=True):
    """One step of the pipeline, with the defaults applied."""

    name: str
    type: StepType = "exec"
    scripts: tuple[str, ...]
    envs: dict[str, str] = {}
    working_directory: str | None = None
    """Normalized directory relative to the workspace, or None for the workspace."""
    timeout: float | None = None
    """Seconds one attempt may take, or None for the executor's maximum."""
    retry: Retry = Retry()
    if_: str | None = msgspec.field(default=None, name="if")
    """Source text of the `if` expression, or None to run the step unconditionally."""
    when: When = "on_success"
    continue_on_error: bool = False
    artifacts: tuple[str, ...] = ()
    shell: Shell | None = None
    """Shell of this step, or None for the pipeline's."""

    def should_run(self, *, run_failed: bool, variables: Mapping[str, str]) -> bool:
        """Decide whether the step runs, from `when` and then `if`.

        `run_failed` is whether an earlier step failed or timed out without
        `continue_on_error`. `variables` should be the step's environment, as
        returned by `Pipeline.step_env`, so that `if` sees what the scripts see.
        """
        if self.when == "on_success" and run_failed:
            return False
        if self.when == "on_failure" and not run_failed:
            return False
        if self.if_ is None:
            return True
        return compile_expression(self.if_).evaluate(variables)


class Pipeline(msgspec.Struct, frozen=True, kw_only=True):
    """A validated `.stasis-ci.yaml` file."""

    image: str
    on: Triggers = Triggers()
    envs: dict[str, str] = {}
    steps: tuple[Step, ...]
    """Steps in file order. `ordered_steps` returns them in run order."""
    timeout: float | None = None
    """Seconds the whole run may take, or None for the executor's maximum."""
    shell: Shell = "sh"

    def ordered_steps(self) -> tuple[Step, ...]:
        """Return the steps in run order: `pre`, then `exec`, then `post` steps.

        Each group keeps file order.
        """
        return tuple(sorted(self.steps, key=lambda step: _STEP_TYPE_ORDER[step.type]))

    def step_shell(self, step: Step) -> Shell:
        """Return the shell of `step`: its own, or else the pipeline's."""
        return step.shell or self.shell

    def step_env(
        self,
        step: Step,
        predefined: Mapping[str, str],
        submitted: Mapping[str, str],
    ) -> dict[str, str]:
        """Build the environment of `step`, later sources overriding earlier ones.

        The order is: the pipeline's `envs`, the step's `envs`, the variables of
        the submission, and last the `predefined` variables (`CI`, `CI_*`). A
        submission thus overrides what the file sets, as trigger variables do in
        GitLab CI, and nothing overrides the runner's own variables, as GitHub
        Actions does for `GITHUB_*`.
        """
        environment = dict(self.envs)
        environment.update(step.envs)
        environment.update(submitted)
        environment.update(predefined)
        return environment

    def match_trigger(
        self, kind: str, branch: str | None = None, tag: str | None = None
    ) -> tuple[bool, str]:
        """Return whether a submission of `kind` runs, and why not when it does not.

        `kind` is "push" (with `branch`), "tag" (with `tag`) or "manual". The
        reason is "" when the submission runs.
        """
        if kind == "manual":
            if self.on.manual:
                return True, ""
            return False, "manual submissions are disabled by on: manual: false"
        if kind == "push":
            return _match_globs("branch", branch, "push", self.on.push)
        if kind == "tag":
            return _match_globs("tag", tag, "tag", self.on.tag)
        raise ValueError(
            f"invalid trigger kind {kind!r}: use 'push', 'tag' or 'manual'"
        )


def _match_globs(
    noun: str, name: str | None, key: str, globs: tuple[str, ...] | None
) -> tuple[bool, str]:
    if name is None:
        raise ValueError(f"missing {noun} for a {key} submission: pass {noun}=<name>")
    if globs is None:
        return True, ""
    if any(glob_match(pattern, name) for pattern in globs):
        return True, ""
    if not globs:
        return False, f"{noun} {name!r} does not run because on: lists no {key} globs"
    return False, f"{noun} {name!r} matches none of {key}: {list(globs)!r}"
