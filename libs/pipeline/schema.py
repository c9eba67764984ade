"""The accepted shape of `.stasis-ci.yaml` as msgspec Structs, and its JSON Schema.

These Structs describe the file as written (durations as numbers or text, env
values as any scalar). The loader takes its key names from them, so the schema
and the loader accept the same keys. Regenerate the shipped schema after a change:

    python -m libs.pipeline > libs/pipeline/pipeline.schema.json
"""

import json
from typing import Annotated, Any, Literal

import msgspec

from .expressions import MAX_EXPRESSION_LENGTH

DURATION_PATTERN = r"^\s*([0-9]+(\.[0-9]+)?|([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+)\s*$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
RESERVED_ENV_NAME_PATTERN = r"^(?!CI$)(?!CI_)[A-Za-z_][A-Za-z0-9_]*$"
STEP_NAME_PATTERN = r"^(?!_)[A-Za-z0-9_-]{1,64}$"

_DurationText = Annotated[str, msgspec.Meta(pattern=DURATION_PATTERN)]
Timeout = Annotated[float, msgspec.Meta(gt=0)] | _DurationText
Delay = Annotated[float, msgspec.Meta(ge=0)] | _DurationText
EnvName = Annotated[str, msgspec.Meta(pattern=RESERVED_ENV_NAME_PATTERN)]
EnvValue = str | int | float | bool
StepName = Annotated[str, msgspec.Meta(pattern=STEP_NAME_PATTERN)]
Shell = Literal["sh", "bash"]
Globs = list[str]


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class RetrySpec(msgspec.Struct, forbid_unknown_fields=True):
    """`retry` of a step: how often and how long apart a failed step runs again."""

    max_attempts: Annotated[
        int, msgspec.Meta(ge=1, le=10), _doc("Attempts in all, including the first.")
    ] = 1
    delay: Annotated[Delay, _doc("Wait before the second attempt.")] = 0.0
    backoff: Annotated[
        float, msgspec.Meta(ge=1.0), _doc("Factor applied to the wait per attempt.")
    ] = 1.0
    max_delay: Annotated[Delay, _doc("Upper bound of any wait.")] = 300.0


class TriggersSpec(msgspec.Struct, forbid_unknown_fields=True):
    """`on`: which submissions start the pipeline."""

    push: Annotated[
        Globs | None, _doc("Branch globs; omitted or null runs pushes to any branch.")
    ] = None
    tag: Annotated[Globs, _doc("Tag globs; omitted runs no tag pushes.")] = []
    manual: Annotated[bool, _doc("Whether manual submissions run.")] = True


class StepSpec(msgspec.Struct, forbid_unknown_fields=True):
    """One entry of `steps`."""

    scripts: Annotated[
        list[str], msgspec.Meta(min_length=1), _doc("Commands, run in order.")
    ]
    type: Annotated[Literal["pre", "exec", "post"], _doc("Group the step runs in.")] = (
        "exec"
    )
    envs: Annotated[dict[EnvName, EnvValue], _doc("Variables of this step.")] = {}
    working_directory: Annotated[
        str | None, _doc("Directory relative to the workspace.")
    ] = None
    timeout: Annotated[Timeout | None, _doc("Time limit of one attempt.")] = None
    retry: RetrySpec | None = None
    if_: Annotated[
        Annotated[str, msgspec.Meta(max_length=MAX_EXPRESSION_LENGTH)] | None,
        _doc("Condition; the step is skipped when it is false."),
    ] = msgspec.field(default=None, name="if")
    when: Annotated[
        Literal["on_success", "on_failure", "always"],
        _doc("Which outcome of the earlier steps lets this step run."),
    ] = "on_success"
    continue_on_error: Annotated[
        bool, _doc("Whether a failure of this step leaves the run successful.")
    ] = False
    artifacts: Annotated[Globs, _doc("Workspace globs to upload.")] = []
    shell: Annotated[Shell | None, _doc("Shell of this step.")] = None


class PipelineSpec(msgspec.Struct, forbid_unknown_fields=True):
    """The whole `.stasis-ci.yaml` file."""

    image: Annotated[str, msgspec.Meta(min_length=1), _doc("Container image.")]
    steps: Annotated[
        dict[StepName, StepSpec], msgspec.Meta(min_length=1), _doc("Steps.")
    ]
    on: Annotated[
        TriggersSpec | msgspec.UnsetType,
        _doc("Submissions that run the pipeline; omitted runs every submission."),
    ] = msgspec.UNSET
    envs: Annotated[dict[EnvName, EnvValue], _doc("Variables of every step.")] = {}
    timeout: Annotated[Timeout | None, _doc("Time limit of the whole run.")] = None
    shell: Annotated[Shell, _doc("Shell of every step.")] = "sh"


def key_names(spec: type[msgspec.Struct]) -> tuple[str, ...]:
    """Return the keys a Struct accepts, as written in the file."""
    return tuple(field.encode_name for field in msgspec.structs.fields(spec))


def pipeline_json_schema() -> dict[str, Any]:
    """Return the JSON Schema (draft 2020-12) of `.stasis-ci.yaml`."""
    schema = msgspec.json.schema(PipelineSpec)
    # Top-level keys starting with "." may hold anything, such as YAML anchors.
    schema["$defs"]["PipelineSpec"]["patternProperties"] = {"^\\.": {}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Stasis CI pipeline (.stasis-ci.yaml)",
        **schema,
    }


def pipeline_json_schema_text() -> str:
    """Return the JSON Schema as the text of the shipped `pipeline.schema.json`."""
    return json.dumps(pipeline_json_schema(), indent=2, sort_keys=True) + "\n"
