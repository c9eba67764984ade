"""`load_pipeline`: from the text of `.stasis-ci.yaml` to a validated Pipeline."""

import re
from collections.abc import Callable
from typing import Any

from yaml.nodes import MappingNode, Node

from .errors import PipelineError
from .fields import FieldReader, InvalidField, Items, describe
from .model import Pipeline, Retry, Step, Triggers
from .schema import (
    STEP_NAME_PATTERN,
    PipelineSpec,
    RetrySpec,
    StepSpec,
    TriggersSpec,
    key_names,
)
from .yaml_source import check_document, compose, join_path

_STEP_NAME = re.compile(STEP_NAME_PATTERN)
_SHELLS = ("sh", "bash")

Read = Callable[[FieldReader, Node, str], Any]
"""Function that reads one key's value node at its key path.

It raises InvalidField after recording the issue when the value is invalid.
"""


def load_pipeline(text: str, *, source: str = ".stasis-ci.yaml") -> Pipeline:
    """Parse and validate a pipeline file.

    Raises PipelineError listing every problem at once, each with its key path,
    line and column in `source`.
    """
    reader = FieldReader()
    root = compose(text, reader.report)
    pipeline = None
    if root is None and not reader.issues:
        reader.report(None, "", "the file is empty; set at least image and steps")
    if root is not None and check_document(root, reader.report):
        pipeline = _read_pipeline(reader, root)

    if reader.issues or pipeline is None:
        issues = sorted(reader.issues, key=lambda i: (i.line or 0, i.column or 0))
        raise PipelineError(source, issues)
    return pipeline


def _read_fields(
    reader: FieldReader, items: Items, path: str, table: dict[str, Read]
) -> dict[str, Any] | None:
    """Read each key of `items` with its `table` entry, or return None if any fails."""
    values = {}
    failed = False
    for key, (_, value_node) in items.items():
        try:
            values[key] = table[key](reader, value_node, join_path(path, key))
        except InvalidField:
            failed = True
    return None if failed else values


def _read_pipeline(reader: FieldReader, root: Node) -> Pipeline | None:
    if not isinstance(root, MappingNode):
        reader.report(
            root,
            "",
            f"expected a mapping with keys such as image and steps, found "
            f"{describe(root)}",
        )
        return None
    # Top-level keys starting with "." hold YAML anchors for steps to merge.
    items = reader.mapping(root, "", key_names(PipelineSpec), hidden_prefix=".")
    reader.require(items, root, "", "image", "set the container image, e.g. gcc:13")
    reader.require(items, root, "", "steps", "define at least one step")
    values = _read_fields(reader, items, "", _PIPELINE_FIELDS)
    if values is None or "image" not in items or "steps" not in items:
        return None
    return Pipeline(**values)


def _read_steps(reader: FieldReader, node: Node, path: str) -> tuple[Step, ...]:
    items = reader.mapping(node, path, None)
    if not items:
        raise reader.fail(
            node, path, "expected at least one step, e.g. build: {scripts: [make]}"
        )
    steps = []
    for name, (key_node, value_node) in items.items():
        step_path = join_path(path, name)
        if not _STEP_NAME.fullmatch(name):
            reader.report(key_node, step_path, _invalid_step_name(name))
            continue
        step = _read_step(reader, name, value_node, step_path)
        if step is not None:
            steps.append(step)
    if len(steps) < len(items):
        raise InvalidField("invalid steps")
    return tuple(steps)


def _invalid_step_name(name: str) -> str:
    if name.startswith("_"):
        return (
            f"invalid step name {name!r}: names starting with '_' are reserved "
            "for the runner; rename the step"
        )
    return f"invalid step name {name!r}: use 1 to 64 letters, digits, '_' or '-'"


def _read_step(reader: FieldReader, name: str, node: Node, path: str) -> Step | None:
    try:
        items = reader.mapping(node, path, key_names(StepSpec))
    except InvalidField:
        return None
    reader.require(items, node, path, "scripts", "list the commands to run")
    values = _read_fields(reader, items, path, _STEP_FIELDS)
    if values is None or "scripts" not in values:
        return None
    if "if" in values:
        values["if_"] = values.pop("if")
    return Step(name=name, **values)


def _read_retry(reader: FieldReader, node: Node, path: str) -> Retry:
    def read(value: Node, value_path: str) -> Retry:
        items = reader.mapping(value, value_path, key_names(RetrySpec))
        values = _read_fields(reader, items, value_path, _RETRY_FIELDS)
        if values is None:
            raise InvalidField("invalid retry")
        return Retry(**values)

    return reader.optional(read, node, path) or Retry()


def _read_triggers(reader: FieldReader, node: Node, path: str) -> Triggers:
    items = reader.mapping(node, path, key_names(TriggersSpec))
    values = _read_fields(reader, items, path, _TRIGGER_FIELDS)
    if values is None:
        raise InvalidField("invalid on")
    # Once `on` is written, tag pushes run only where `tag` lists globs for them.
    values.setdefault("tag", ())
    return Triggers(**values)


def _backoff(reader: FieldReader, node: Node, path: str) -> float:
    value = reader.number(node, path)
    if value < 1.0:
        raise reader.fail(
            node,
            path,
            f"invalid backoff {value!r}: must be at least 1.0, "
            "where 1.0 waits the same delay before every attempt",
        )
    return value


def _image(reader: FieldReader, node: Node, path: str) -> str:
    value = reader.text(node, path)
    if not value or any(char.isspace() for char in value):
        raise reader.fail(
            node,
            path,
            f"invalid image {value!r}: use a reference such as "
            "'gcc:13-bookworm', without spaces",
        )
    return value


def _globs(reader: FieldReader, node: Node, path: str) -> tuple[str, ...]:
    return reader.text_list(node, path, non_empty=False)


def _artifacts(reader: FieldReader, node: Node, path: str) -> tuple[str, ...]:
    return reader.each(node, path, reader.relative_path)


def _timeout(reader: FieldReader, node: Node, path: str) -> float | None:
    def read(value: Node, value_path: str) -> float:
        return reader.duration(value, value_path, allow_zero=False)

    return reader.optional(read, node, path)


def _delay(reader: FieldReader, node: Node, path: str) -> float:
    return reader.duration(node, path, allow_zero=True)


def _working_directory(reader: FieldReader, node: Node, path: str) -> str | None:
    value = reader.optional(reader.relative_path, node, path)
    return None if value == "." else value


_PIPELINE_FIELDS: dict[str, Read] = {
    "image": _image,
    "on": _read_triggers,
    "envs": FieldReader.env_map,
    "steps": _read_steps,
    "timeout": _timeout,
    "shell": lambda reader, node, path: reader.choice(node, path, _SHELLS),
}
_STEP_FIELDS: dict[str, Read] = {
    "scripts": lambda reader, node, path: reader.text_list(node, path, non_empty=True),
    "type": lambda reader, node, path: reader.choice(
        node, path, ("pre", "exec", "post")
    ),
    "envs": FieldReader.env_map,
    "working_directory": _working_directory,
    "timeout": _timeout,
    "retry": _read_retry,
    "if": lambda reader, node, path: reader.optional(reader.expression, node, path),
    "when": lambda reader, node, path: reader.choice(
        node, path, ("on_success", "on_failure", "always")
    ),
    "continue_on_error": FieldReader.boolean,
    "artifacts": _artifacts,
    "shell": lambda reader, node, path: reader.optional(
        lambda value, value_path: reader.choice(value, value_path, _SHELLS), node, path
    ),
}
_RETRY_FIELDS: dict[str, Read] = {
    "max_attempts": lambda reader, node, path: reader.integer(node, path, 1, 10),
    "delay": _delay,
    "backoff": _backoff,
    "max_delay": _delay,
}
_TRIGGER_FIELDS: dict[str, Read] = {
    "push": lambda reader, node, path: reader.optional(
        lambda value, value_path: _globs(reader, value, value_path), node, path
    ),
    "tag": _globs,
    "manual": FieldReader.boolean,
}
