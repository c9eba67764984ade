"""Typed reads of YAML nodes that record a PipelineIssue for each invalid value.

Each read either returns a valid Python value or records the issue and raises
`InvalidField`, which the caller catches per key so that one bad value does not
hide the next.
"""

import difflib
import math
import posixpath
import re
from collections.abc import Callable, Iterator
from typing import TypeVar

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from libs.units import parse_duration

from .errors import ExpressionError, PipelineIssue
from .expressions import compile_expression
from .schema import ENV_NAME_PATTERN
from .yaml_source import is_merge_key, join_path, position, scalar_value

T = TypeVar("T")
Items = dict[str, tuple[Node, Node]]
"""Keys of a mapping in file order, each with its key node and value node."""

_ENV_NAME = re.compile(ENV_NAME_PATTERN)
# YAML 1.1 reads these as booleans, but this loader keeps them as text.
_YAML11_BOOLEANS = frozenset(
    word
    for text in ("yes", "no", "on", "off", "y", "n", "true", "false")
    for word in (text, text.capitalize(), text.upper())
)


class InvalidField(Exception):
    """Raised by a read after it has recorded its issue."""


class FieldReader:
    """Reads typed values out of nodes and collects the issues it finds."""

    def __init__(self) -> None:
        self.issues: list[PipelineIssue] = []

    def report(self, node: Node | None, path: str, message: str) -> None:
        line, column = position(node)
        self.issues.append(PipelineIssue(path, line, column, message))

    def fail(self, node: Node | None, path: str, message: str) -> InvalidField:
        """Record an issue and return the exception for the caller to raise."""
        self.report(node, path, message)
        return InvalidField(message)

    def mapping(
        self,
        node: Node,
        path: str,
        keys: tuple[str, ...] | None,
        *,
        hidden_prefix: str | None = None,
    ) -> Items:
        """Read a mapping, reporting unknown keys when `keys` lists the known ones.

        `<<` merge keys insert the merged mapping's keys at their place, unless
        the mapping sets the same key itself. Keys starting with `hidden_prefix`
        are left out without an issue.
        """
        if not isinstance(node, MappingNode):
            raise self.fail(node, path, f"expected a mapping, found {describe(node)}")
        items: Items = {}
        for key_node, value_node in self._merged(node, path, frozenset()):
            if not isinstance(key_node, ScalarNode):
                self.report(key_node, path, "a key must be text, not a mapping or list")
                continue
            key = str(key_node.value)
            if hidden_prefix is not None and key.startswith(hidden_prefix):
                continue
            if key in items:
                continue  # duplicate keys are reported by check_document
            if keys is not None and key not in keys:
                self.report(key_node, join_path(path, key), _unknown_key(key, keys))
                continue
            items[key] = (key_node, value_node)
        return items

    def _merged(
        self, node: MappingNode, path: str, shadowed: frozenset[str]
    ) -> Iterator[tuple[Node, Node]]:
        """Yield the items of `node` with merges expanded, skipping `shadowed` keys."""
        own = frozenset(
            key.value
            for key, _ in node.value
            if isinstance(key, ScalarNode) and not is_merge_key(key)
        )
        for key_node, value_node in node.value:
            if not is_merge_key(key_node):
                if not (
                    isinstance(key_node, ScalarNode) and key_node.value in shadowed
                ):
                    yield key_node, value_node
                continue
            sources = (
                value_node.value
                if isinstance(value_node, SequenceNode)
                else [value_node]
            )
            for source in sources:
                if isinstance(source, MappingNode):
                    yield from self._merged(source, path, shadowed | own)
                else:
                    self.report(
                        source,
                        join_path(path, "<<"),
                        f"expected a mapping or list of mappings to merge, "
                        f"found {describe(source)}",
                    )

    def require(self, items: Items, node: Node, path: str, key: str, hint: str) -> None:
        """Report `key` missing from the mapping at `node`."""
        if key not in items:
            self.report(node, path, f"missing required key {key!r}; {hint}")

    def text(self, node: Node, path: str) -> str:
        """Read a text scalar; a number is read as the text written in the file."""
        value = scalar_value(node) if isinstance(node, ScalarNode) else None
        if not isinstance(node, ScalarNode) or value is None or isinstance(value, bool):
            raise self.fail(node, path, f"expected text, found {describe(node)}")
        return str(node.value)

    def choice(self, node: Node, path: str, choices: tuple[str, ...]) -> str:
        value = self.text(node, path)
        if value not in choices:
            options = ", ".join(repr(choice) for choice in choices)
            raise self.fail(
                node, path, f"invalid value {value!r}: use one of {options}"
            )
        return value

    def boolean(self, node: Node, path: str) -> bool:
        value = scalar_value(node) if isinstance(node, ScalarNode) else None
        if isinstance(value, bool):
            return value
        message = f"expected true or false, found {describe(node)}"
        if isinstance(node, ScalarNode) and node.value in _YAML11_BOOLEANS:
            message += "; only the lowercase words true and false are booleans here"
        raise self.fail(node, path, message)

    def number(self, node: Node, path: str) -> float:
        value = scalar_value(node) if isinstance(node, ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(node, path, f"expected a number, found {describe(node)}")
        if not math.isfinite(value):
            raise self.fail(
                node, path, f"invalid number {node.value!r}: must be finite"
            )
        return float(value)

    def integer(self, node: Node, path: str, low: int, high: int) -> int:
        value = scalar_value(node) if isinstance(node, ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(
                node, path, f"expected a whole number, found {describe(node)}"
            )
        if not low <= value <= high:
            raise self.fail(
                node, path, f"invalid value {value!r}: must be from {low} to {high}"
            )
        return value

    def duration(self, node: Node, path: str, *, allow_zero: bool) -> float:
        """Read seconds from a number or a text such as "10m" or "1h30m"."""
        value = scalar_value(node) if isinstance(node, ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self.fail(
                node,
                path,
                f"expected a duration such as 90 or '10m', found {describe(node)}",
            )
        if isinstance(value, int | float) and (value < 0 or not math.isfinite(value)):
            raise self.fail(
                node,
                path,
                f"invalid duration {node.value!r}: use a finite number "
                "of seconds that is not negative",
            )
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise self.fail(node, path, str(exc)) from exc
        if seconds == 0 and not allow_zero:
            raise self.fail(
                node,
                path,
                f"invalid timeout {node.value!r}: must be more than 0 "
                "seconds; remove the key to use the executor's maximum",
            )
        return seconds

    def text_list(self, node: Node, path: str, *, non_empty: bool) -> tuple[str, ...]:
        """Read a list of text entries, reporting every invalid entry."""
        return self.each(node, path, self.text, non_empty=non_empty)

    def each(
        self,
        node: Node,
        path: str,
        read: Callable[[Node, str], T],
        *,
        non_empty: bool = False,
    ) -> tuple[T, ...]:
        """Read every entry of a list with `read`, reporting every invalid one."""
        if not isinstance(node, SequenceNode):
            raise self.fail(node, path, f"expected a list, found {describe(node)}")
        if non_empty and not node.value:
            raise self.fail(
                node, path, "expected at least one entry, found an empty list"
            )
        values = []
        failed = False
        for index, item in enumerate(node.value):
            try:
                values.append(read(item, f"{path}[{index}]"))
            except InvalidField:
                failed = True
        if failed:
            raise InvalidField(f"invalid entries in {path}")
        return tuple(values)

    def relative_path(self, node: Node, path: str) -> str:
        """Read a path inside the workspace and normalize it. "." is the workspace."""
        value = self.text(node, path)
        if not value or "\0" in value:
            raise self.fail(
                node, path, f"invalid path {value!r}: must be a non-empty path"
            )
        if value.startswith("/"):
            raise self.fail(
                node,
                path,
                f"invalid path {value!r}: must be relative to the "
                "workspace, e.g. 'src' instead of '/src'",
            )
        normalized = posixpath.normpath(value)
        if normalized == ".." or normalized.startswith("../"):
            raise self.fail(
                node,
                path,
                f"invalid path {value!r}: it leads outside the "
                "workspace; remove the '..' parts",
            )
        return normalized

    def expression(self, node: Node, path: str) -> str:
        """Read the source of an `if` expression, checking that it compiles."""
        value = self.text(node, path)
        try:
            compile_expression(value)
        except ExpressionError as exc:
            self.issues.append(_expression_issue(node, path, value, exc))
            raise InvalidField(exc.message) from exc
        return value

    def env_map(self, node: Node, path: str) -> dict[str, str]:
        """Read `envs`, keeping every value as the exact text written in the file."""
        envs = {}
        for name, (key_node, value_node) in self.mapping(node, path, None).items():
            name_path = join_path(path, name)
            if not _ENV_NAME.fullmatch(name):
                self.report(key_node, name_path, _invalid_env_name(name))
            elif name == "CI" or name.startswith("CI_"):
                self.report(
                    key_node,
                    name_path,
                    f"variable {name!r} is set by the runner "
                    "and cannot be set in the file; rename it",
                )
            elif not isinstance(value_node, ScalarNode):
                self.report(
                    value_node,
                    name_path,
                    f"expected a text value, found "
                    f"{describe(value_node)}; quote it as one string",
                )
            else:
                envs[name] = str(value_node.value)
        return envs

    def optional(
        self, read: Callable[[Node, str], T], node: Node, path: str
    ) -> T | None:
        """Read with `read`, except that a null value stands for the default None."""
        if isinstance(node, ScalarNode) and scalar_value(node) is None:
            return None
        return read(node, path)


def describe(node: Node) -> str:
    """Describe a node's value for a message, e.g. "a list" or "the number 3"."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    value = scalar_value(node) if isinstance(node, ScalarNode) else None
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return f"the number {node.value}"
    return f"the text {value!r}"


def _unknown_key(key: str, keys: tuple[str, ...]) -> str:
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if match:
        return f"unknown key {key!r}; did you mean {match[0]!r}?"
    return f"unknown key {key!r}; use one of {', '.join(sorted(keys))}"


def _invalid_env_name(name: str) -> str:
    return (
        f"invalid variable name {name!r}: use letters, digits and '_', "
        "not starting with a digit"
    )


def _expression_issue(
    node: Node, path: str, value: str, exc: ExpressionError
) -> PipelineIssue:
    """Place an expression error at its character in the file where possible."""
    line, column = position(node)
    start, end = node.start_mark, node.end_mark
    written = start.buffer[start.index : end.index] if start.buffer else ""
    if column is not None and start.line == end.line:
        if written == value:
            column += exc.column - 1
        elif written[1:-1] == value and written[:1] in ("'", '"'):
            column += exc.column
    message = f"invalid if expression: {exc.message} (column {exc.column} of {value!r})"
    return PipelineIssue(path, line, column, message)
