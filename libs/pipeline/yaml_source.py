"""Reading YAML into a node tree with line and column, with the YAML 1.1 traps closed.

The loader composes nodes and never constructs Python objects, so no tag can
run code and no alias is expanded while reading. Scalars are typed later by
`scalar_value`, which follows the YAML 1.2 core schema: only `true` and `false`
are booleans, so `on`, `yes`, `no`, `y` and `n` stay strings, and `0755` is
the decimal 755, never an octal number.

`check_document` then walks the tree once, as the validator would see it after
alias expansion, and reports duplicate keys, unsupported tags and documents that
expand past `MAX_NODES` nodes or `MAX_DEPTH` levels (a "billion laughs" file).
"""

import re
from collections.abc import Callable
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_SOURCE_LENGTH = 1_000_000
"""Maximum length of a pipeline file, in characters."""
MAX_NODES = 100_000
"""Maximum number of YAML nodes after alias expansion."""
MAX_DEPTH = 64
"""Maximum nesting of mappings and sequences, after alias expansion."""

PLAIN_TAG = "tag:stasis-ci,2024:plain"
"""Tag the loader gives to every untagged, unquoted scalar, to type it later."""
_STR_TAG = "tag:yaml.org,2002:str"
_ALLOWED_TAGS = frozenset(
    {PLAIN_TAG, _STR_TAG, "tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"}
)
_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_NULLS = frozenset({"", "~", "null"})

Scalar = str | int | float | bool | None
Report = Callable[[Node | None, str, str], None]
"""Callback recording an issue: (node it is about, key path, message)."""


class _PipelineLoader(yaml.SafeLoader):
    """SafeLoader that tags plain scalars for later typing and bounds nesting."""

    yaml_implicit_resolvers: dict[Any, Any] = {}
    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        # The composer recurses once per level, so a deeply nested document
        # would otherwise end in RecursionError.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nesting deeper than {MAX_DEPTH} levels; flatten the document",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_PipelineLoader.add_implicit_resolver(PLAIN_TAG, re.compile(r".*", re.DOTALL), None)


def compose(text: str, report: Report) -> Node | None:
    """Parse `text` into its root node, or report the syntax error and return None."""
    if len(text) > MAX_SOURCE_LENGTH:
        report(
            None,
            "",
            f"file is {len(text)} characters long, more than the maximum of "
            f"{MAX_SOURCE_LENGTH}; shorten it",
        )
        return None
    loader = None
    try:
        loader = _PipelineLoader(text)
        return loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = ", ".join(part for part in (exc.context, exc.problem) if part)
        report(_node_at(mark), "", f"invalid YAML: {detail or 'syntax error'}")
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position)
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1)
        mark = yaml.Mark("", exc.position, line, column, text, exc.position)
        report(
            _node_at(mark),
            "",
            f"invalid YAML: the control character {chr(exc.character)!r} is not "
            "allowed; remove it, or write it as an escape in a double-quoted string",
        )
    finally:
        if loader is not None:
            loader.dispose()
    return None


def _node_at(mark: yaml.Mark | None) -> Node | None:
    """Wrap a mark in a node so that a syntax error is reported like any issue."""
    if mark is None:
        return None
    return ScalarNode(_STR_TAG, "", start_mark=mark, end_mark=mark)


def scalar_value(node: ScalarNode) -> Scalar:
    """Type a scalar by the YAML 1.2 core schema. Quoted or tagged scalars are text."""
    if node.tag != PLAIN_TAG:
        return str(node.value)
    text: str = node.value
    if text in ("true", "false"):
        return text == "true"
    if text in _NULLS:
        return None
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def is_merge_key(node: Node) -> bool:
    """Return whether `node` is the `<<` merge key, which inserts another mapping."""
    return isinstance(node, ScalarNode) and node.tag == PLAIN_TAG and node.value == "<<"


def position(node: Node | None) -> tuple[int | None, int | None]:
    """Return the 1-based line and column where `node` starts."""
    if node is None or node.start_mark is None:
        return None, None
    return node.start_mark.line + 1, node.start_mark.column + 1


def join_path(path: str, key: str) -> str:
    """Return the key path of `key` inside `path`, such as `steps.build`."""
    return f"{path}.{key}" if path else key


class _Rejected(Exception):
    """Raised inside `check_document` to stop at a document too large to read."""

    def __init__(self, node: Node, path: str, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.path = path
        self.message = message


def check_document(root: Node, report: Report) -> bool:
    """Report duplicate keys and tags, and return False for a document too large.

    The walk counts each node once per place an alias puts it, which is the size
    of the expanded document. It remembers the size and height of each node it has
    seen instead of walking it again, so it takes time linear in the file even for
    a "billion laughs" document.
    """
    try:
        _DocumentWalk(report).measure(root, "", 1)
    except _Rejected as exc:
        report(exc.node, exc.path, exc.message)
        return False
    return True


class _DocumentWalk:
    def __init__(self, report: Report) -> None:
        self._report = report
        self._measured: dict[int, tuple[int, int]] = {}
        self._open: set[int] = set()

    def measure(self, node: Node, path: str, depth: int) -> tuple[int, int]:
        """Return how many nodes `node` expands to and how many levels deep it is."""
        if id(node) in self._measured:
            size, height = self._measured[id(node)]
            self._check_depth(node, path, depth + height - 1)
            return size, height
        self._check(node, path, depth)
        self._open.add(id(node))
        size, height = 1, 1
        for child_path, child in self._children(node, path):
            child_size, child_height = self.measure(child, child_path, depth + 1)
            size += child_size
            height = max(height, child_height + 1)
            if size > MAX_NODES:
                raise _Rejected(
                    node,
                    path,
                    f"the document expands to more than {MAX_NODES} YAML nodes "
                    "through its aliases; reduce the use of aliases",
                )
        self._open.discard(id(node))
        self._measured[id(node)] = (size, height)
        return size, height

    def _check_depth(self, node: Node, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _Rejected(
                node,
                path,
                f"nesting deeper than {MAX_DEPTH} levels after alias expansion; "
                "flatten the document",
            )

    def _check(self, node: Node, path: str, depth: int) -> None:
        if id(node) in self._open:
            raise _Rejected(
                node,
                path,
                "an alias refers to a node that contains it; "
                "recursive YAML structures are not supported",
            )
        self._check_depth(node, path, depth)
        if node.tag not in _ALLOWED_TAGS:
            self._report(
                node, path, f"YAML tag {node.tag!r} is not supported; remove it"
            )

    def _children(self, node: Node, path: str) -> list[tuple[str, Node]]:
        """Return (key path, node) of each child, reporting duplicate keys."""
        if isinstance(node, SequenceNode):
            return [(f"{path}[{index}]", item) for index, item in enumerate(node.value)]
        if not isinstance(node, MappingNode):
            return []
        children = []
        first_keys: dict[str, Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else "?"
            child_path = join_path(path, key)
            if isinstance(key_node, ScalarNode) and key in first_keys:
                line, _ = position(first_keys[key])
                self._report(
                    key_node,
                    child_path,
                    f"duplicate key {key!r}, first set on line {line}; "
                    "remove one of them",
                )
            first_keys.setdefault(key, key_node)
            children.extend([(child_path, key_node), (child_path, value_node)])
        return children
