"""The glob matcher that selects workspace paths for artifacts.

Every part of Stasis that matches artifact patterns uses this module, so one pattern
selects the same files everywhere. The rules:

- Patterns and paths are relative to the workspace and use `/` between directories.
- `*` matches any run of characters inside one path segment and never crosses `/`.
- `?` matches one character other than `/`.
- `[abc]`, `[a-z]`, `[!abc]` and `[^abc]` are character classes. None matches `/`.
  A `[` without a closing `]` is a literal `[`, and `[[]` matches a literal `[`.
- `**` as a whole segment followed by `/` matches zero or more directories, so
  `dist/**/*` selects both `dist/index.html` and `dist/a/b/c.txt`.
- A trailing `/**` selects everything below that directory, and `**` alone selects
  the whole workspace.
- A pattern whose last segment has no wildcard (`dist`, `build/out`), or that ends in
  `/`, names a directory: when such a directory exists, its whole tree is selected.
  A trailing `/` also restricts the pattern to directories.
- A directory matched by a wildcard is stored only when it is empty. Otherwise only
  the entries that the patterns select inside it are stored, together with the
  directories that contain them.
- Dot files and dot directories are matched by `*`, `?` and `**` like other names.
- Matching is case-sensitive.

Patterns that are empty, absolute, contain `..` segments, NUL or backslashes raise
`InvalidPattern` naming the pattern. Each pattern is compiled to one regular
expression when it is compiled, never per path.
"""

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .errors import InvalidPattern

_ANY_DIRECTORIES = "(?:[^/]+/)*"
_CLASS_SPECIALS = frozenset("\\[]^&~|")


@dataclass(frozen=True)
class Pattern:
    """One compiled glob pattern."""

    text: str
    """The pattern as written in the pipeline."""
    regex: re.Pattern[str]
    takes_tree: bool
    """Whether a directory that the pattern matches brings its whole tree."""
    directories_only: bool
    """Whether the pattern ended in `/` and so matches directories only."""

    def matches(self, path: str, *, is_dir: bool = False) -> bool:
        """Return whether the pattern itself matches `path`, without the tree rule."""
        if self.directories_only and not is_dir:
            return False
        return self.regex.fullmatch(path) is not None

    def covers(self, path: str, *, is_dir: bool = False) -> bool:
        """Return whether `path` is a named directory or lies in its tree."""
        if not self.takes_tree:
            return False
        if self.matches(path, is_dir=is_dir):
            return True
        return any(self.regex.fullmatch(parent) for parent in _ancestors(path))


@dataclass(frozen=True)
class MatchResult:
    """The outcome of `match_paths`."""

    matched: list[str]
    """Selected paths in sorted order, spelled as they were given."""
    unmatched_patterns: list[str]
    """Patterns that selected nothing, in the order they were given."""


def compile_pattern(pattern: str) -> Pattern:
    """Compile one glob pattern, raising `InvalidPattern` for an unsafe one."""
    segments, directories_only = _split_pattern(pattern)
    parts: list[str] = []
    last_is_wildcard = False
    for index, segment in enumerate(segments):
        is_last = index == len(segments) - 1
        if segment == "**":
            parts.append(".+" if is_last else _ANY_DIRECTORIES)
            last_is_wildcard = True
            continue
        translated, last_is_wildcard = _translate_segment(pattern, segment)
        parts.append(translated if is_last else translated + "/")
    try:
        regex = re.compile("".join(parts))
    except re.error as exc:
        raise InvalidPattern(pattern, f"not a valid glob ({exc})") from exc
    takes_tree = directories_only or not last_is_wildcard or segments[-1] == "**"
    return Pattern(pattern, regex, takes_tree, directories_only)


def compile_patterns(patterns: Iterable[str]) -> list[Pattern]:
    """Compile every pattern once, dropping exact duplicates."""
    return [compile_pattern(text) for text in dict.fromkeys(patterns)]


class Selection:
    """Decides, entry by entry, which workspace paths the patterns select.

    Entries can be offered in any order, so a tar stream can be filtered without
    looking ahead. Whether a directory is kept is only known at the end, through
    `directories`, because a wildcard keeps a directory only when it is empty.
    """

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = compile_patterns(patterns)
        self._used: set[str] = set()
        self._tree_directories: set[str] = set()
        self._wildcard_directories: set[str] = set()
        self._parents: set[str] = set()

    def offer(self, path: str, *, is_dir: bool) -> bool:
        """Record one entry and return whether a pattern selects it.

        For a directory the result only says that a pattern matched it. The final
        decision comes from `directories`.
        """
        self._parents.update(_ancestors(path))
        if not _is_relative_path(path):
            return False
        selected = False
        in_tree = False
        for pattern in self.patterns:
            if pattern.covers(path, is_dir=is_dir):
                in_tree = True
            elif not pattern.matches(path, is_dir=is_dir):
                continue
            self._used.add(pattern.text)
            selected = True
        if is_dir and in_tree:
            self._tree_directories.add(path)
        elif is_dir and selected:
            self._wildcard_directories.add(path)
        return selected

    def directories(self, kept_paths: Iterable[str]) -> set[str]:
        """Return the directories to store, given the non-directory paths kept."""
        result = set(self._tree_directories)
        result.update(d for d in self._wildcard_directories if d not in self._parents)
        for path in kept_paths:
            result.update(_ancestors(path))
        return result

    def unmatched_patterns(self) -> list[str]:
        """Return the patterns that matched no entry, in the order given."""
        return [p.text for p in self.patterns if p.text not in self._used]


def match_paths(patterns: Sequence[str], paths: Iterable[str]) -> MatchResult:
    """Select the workspace-relative `paths` that the glob `patterns` name.

    A path ending in `/` is a directory, and so is every parent of a given path.
    Paths that are absolute or contain `..` are never selected.
    """
    selection = Selection(patterns)
    given_directories: dict[str, str] = {}
    kept: list[str] = []
    for path in paths:
        name = path.rstrip("/")
        if path.endswith("/"):
            given_directories[name] = path
            selection.offer(name, is_dir=True)
        elif selection.offer(name, is_dir=False):
            kept.append(name)
    directories = selection.directories(kept)
    matched = kept + [
        given_directories[d] for d in directories & given_directories.keys()
    ]
    return MatchResult(sorted(matched), selection.unmatched_patterns())


def _split_pattern(pattern: str) -> tuple[list[str], bool]:
    if not pattern:
        raise InvalidPattern(pattern, "it is empty, so use '**' to select everything")
    if "\0" in pattern:
        raise InvalidPattern(pattern, "it contains a NUL character")
    if "\\" in pattern:
        raise InvalidPattern(
            pattern,
            "backslash is neither a separator nor an escape here, so use '/' between "
            "directories and a class such as '[*]' for a literal wildcard character",
        )
    if pattern.startswith("/"):
        raise InvalidPattern(
            pattern, "it is absolute, so write it relative to the workspace"
        )
    segments = [s for s in pattern.split("/") if s not in ("", ".")]
    if ".." in segments:
        raise InvalidPattern(pattern, "'..' would leave the workspace, so remove it")
    if not segments:
        raise InvalidPattern(
            pattern, "it names the workspace itself, so use '**' to select everything"
        )
    return segments, pattern.endswith("/")


def _translate_segment(pattern: str, segment: str) -> tuple[str, bool]:
    """Translate one segment to a regex, and tell whether it had a wildcard."""
    out: list[str] = []
    has_wildcard = False
    i = 0
    while i < len(segment):
        char = segment[i]
        i += 1
        if char == "*":
            out.append("[^/]*")
            has_wildcard = True
        elif char == "?":
            out.append("[^/]")
            has_wildcard = True
        elif char == "[" and (end := _class_end(segment, i)) >= 0:
            out.append(_translate_class(segment[i:end]))
            has_wildcard = True
            i = end + 1
        else:
            out.append(re.escape(char))
    return "".join(out), has_wildcard


def _class_end(segment: str, start: int) -> int:
    """Return the index of the `]` closing a class opened before `start`, or -1."""
    i = start
    if i < len(segment) and segment[i] in "!^":
        i += 1
    if i < len(segment) and segment[i] == "]":
        i += 1
    return segment.find("]", i)


def _translate_class(body: str) -> str:
    negated = body[:1] in ("!", "^")
    if negated:
        body = body[1:]
    escaped = "".join("\\" + c if c in _CLASS_SPECIALS else c for c in body)
    # The lookahead keeps every class, negated ones too, from matching `/`.
    return f"(?!/)[{'^' if negated else ''}{escaped}]"


def _ancestors(path: str) -> Iterator[str]:
    index = path.find("/")
    while index > 0:
        yield path[:index]
        index = path.find("/", index + 1)


def _is_relative_path(path: str) -> bool:
    return bool(path) and not path.startswith("/") and ".." not in path.split("/")
