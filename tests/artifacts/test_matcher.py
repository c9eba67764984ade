"""The glob matcher: one table of pattern, path and expected selection."""

import pytest

from libs.artifacts import InvalidPattern, compile_pattern, match_paths

# (pattern, path, selected). A path ending in "/" is a directory.
GLOB_TABLE = [
    ("dist/**/*", "dist/index.html", True),
    ("dist/**/*", "dist/a/b/c.txt", True),
    ("dist/**/*", "dist", False),
    ("dist/**/*", "other/dist/index.html", False),
    ("*", "top.txt", True),
    ("*", ".env", True),
    ("*", ".git/config", False),
    ("*.txt", "a/b.txt", False),
    ("dist/*", "dist/index.html", True),
    ("dist/*", "dist/a/b.txt", False),
    ("**/*.js", "app.js", True),
    ("**/*.js", "src/lib/app.js", True),
    ("**/*.js", "src/lib/app.ts", False),
    ("src/**/test_*.py", "src/test_a.py", True),
    ("src/**/test_*.py", "src/x/y/test_a.py", True),
    ("src/**/test_*.py", "lib/test_a.py", False),
    ("logs/**", "logs/a/b/c.log", True),
    ("logs/**", "logs2/a.log", False),
    ("**", "any/deep/path.bin", True),
    ("**/.cache/**", "build/.cache/entry", True),
    ("dist", "dist/a/b/c.txt", True),
    ("dist", "distribution/a.txt", False),
    ("dist/", "dist/a.txt", True),
    ("dist/", "dist", False),
    ("build/out", "build/out/lib/x.so", True),
    ("**/coverage", "pkg/coverage/index.html", True),
    ("file?.txt", "file1.txt", True),
    ("file?.txt", "file10.txt", False),
    ("file[0-9].txt", "file7.txt", True),
    ("file[!0-9].txt", "filex.txt", True),
    ("file[!0-9].txt", "file7.txt", False),
    ("file[^0-9].txt", "file7.txt", False),
    ("[[]x].txt", "[x].txt", True),
    ("notes [1].txt", "notes 1.txt", True),
    ("notes [1].txt", "notes [1].txt", False),
    ("a[b", "a[b", True),
    ("./dist/*.js", "dist/a.js", True),
    ("*.TXT", "a.txt", False),
    ("*", "empty/", True),
    ("*/", "empty/", True),
    ("*/", "top.txt", False),
    ("~*", "~backup", True),
    ("*.txt", "ünïcødé-日本.txt", True),
]


@pytest.mark.parametrize(("pattern", "path", "selected"), GLOB_TABLE)
def test_glob_table(pattern: str, path: str, selected: bool) -> None:
    result = match_paths([pattern], [path])

    assert result.matched == ([path] if selected else [])
    assert result.unmatched_patterns == ([] if selected else [pattern])


@pytest.mark.parametrize(
    "pattern",
    ["/etc/passwd", "../secrets", "dist/../../etc", "..", "", "dist\\app", "a\0b"],
)
def test_unsafe_pattern_rejected(pattern: str) -> None:
    with pytest.raises(InvalidPattern) as caught:
        compile_pattern(pattern)

    assert repr(pattern) in str(caught.value)


def test_workspace_itself_rejected() -> None:
    with pytest.raises(InvalidPattern, match=r"use '\*\*'"):
        compile_pattern("./")


def test_wildcard_skips_non_empty_directory() -> None:
    paths = ["src/", "src/main.py", "empty/", "top.txt"]

    result = match_paths(["*"], paths)

    assert result.matched == ["empty/", "top.txt"]


def test_named_directory_takes_tree() -> None:
    paths = ["dist/", "dist/a/", "dist/a/b.txt", "dist/.hidden", "src/x.py"]

    result = match_paths(["dist"], paths)

    assert result.matched == ["dist/", "dist/.hidden", "dist/a/", "dist/a/b.txt"]


def test_parent_directories_kept() -> None:
    paths = ["dist/", "dist/a/", "dist/a/b.txt", "dist/a/c.log"]

    result = match_paths(["**/*.txt"], paths)

    assert result.matched == ["dist/", "dist/a/", "dist/a/b.txt"]


def test_unmatched_patterns_reported() -> None:
    result = match_paths(["*.txt", "missing/**", "*.log", "*.txt"], ["a.txt"])

    assert result.matched == ["a.txt"]
    assert result.unmatched_patterns == ["missing/**", "*.log"]


def test_unsafe_paths_never_selected() -> None:
    result = match_paths(["**"], ["../outside", "/etc/passwd", "ok"])

    assert result.matched == ["ok"]


def test_class_never_matches_slash() -> None:
    pattern = compile_pattern("a[!x]b")

    assert pattern.matches("a-b")
    assert not pattern.matches("a/b")
