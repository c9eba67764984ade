"""Tests of the `if` expression language and of glob matching."""

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.pipeline import ExpressionError, compile_expression, glob_match
from libs.pipeline.expressions import MAX_EXPRESSION_LENGTH, MAX_NESTING_DEPTH

VARIABLES = {
    "CI_BRANCH": "main",
    "CI_TAG": "",
    "CI_STEP_ATTEMPT": "2",
    "TEN": "10",
    "NINE": "9",
    "ZERO": "0",
    "FALSE": "false",
    "WORD": "yes",
    "PATH_NAME": "release/1.2/hotfix",
}


def evaluate(text: str) -> bool:
    return compile_expression(text).evaluate(VARIABLES)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CI_BRANCH", True),
        ("WORD", True),
        ("CI_TAG", False),
        ("MISSING", False),
        ("ZERO", False),
        ("FALSE", False),
        ("true", True),
        ("false", False),
        ("'x'", True),
        ("''", False),
        ("0", False),
        ("1", True),
        ("!CI_TAG", True),
        ("!!WORD", True),
    ],
)
def test_truth_of_values(text: str, expected: bool) -> None:
    assert evaluate(text) is expected


@pytest.mark.parametrize(
    ("left", "right", "and_result", "or_result"),
    [
        ("true", "true", True, True),
        ("true", "false", False, True),
        ("false", "true", False, True),
        ("false", "false", False, False),
    ],
)
def test_and_or_truth_table(
    left: str, right: str, and_result: bool, or_result: bool
) -> None:
    assert evaluate(f"{left} && {right}") is and_result
    assert evaluate(f"{left} || {right}") is or_result


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CI_BRANCH == 'main'", True),
        ('CI_BRANCH == "main"', True),
        ("CI_BRANCH != 'main'", False),
        ("MISSING == ''", True),
        ("TEN > NINE", True),  # numeric: as text "10" < "9"
        ("TEN > 9", True),
        ("'10' > '9'", True),
        ("TEN >= 10", True),
        ("TEN <= 9.5", False),
        ("NINE < 10", True),
        ("CI_STEP_ATTEMPT == 2", True),
        ("CI_STEP_ATTEMPT == 2.0", True),
        ("-1 < 0", True),
        ("'b' > 'a'", True),
        ("'abc' < 'abd'", True),
        ("WORD > 5", True),  # text: "yes" > "5"
        ("(TEN > 9) == true", True),
        ("(TEN > 9) == 'true'", True),
    ],
)
def test_comparisons(text: str, expected: bool) -> None:
    assert evaluate(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CI_BRANCH =~ 'ma*'", True),
        ("CI_BRANCH =~ 'dev*'", False),
        ("PATH_NAME =~ 'release/*'", False),
        ("PATH_NAME =~ 'release/**'", True),
        ("PATH_NAME =~ 'release/*/hotfix'", True),
        ("PATH_NAME =~ 'release/?.?/*'", True),
        ("PATH_NAME =~ CI_BRANCH", False),
    ],
)
def test_glob_match_operator(text: str, expected: bool) -> None:
    assert evaluate(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # && binds tighter than ||.
        ("true || false && false", True),
        ("(true || false) && false", False),
        # ! binds tighter than && and ||.
        ("!false && false", False),
        ("!(false && false)", True),
        # Comparison binds tighter than !.
        ("!CI_BRANCH == 'dev'", True),
        ("CI_BRANCH == 'main' && TEN > 9 || false", True),
        ("CI_BRANCH == 'dev' || CI_TAG =~ 'v*' || TEN == 10", True),
    ],
)
def test_precedence(text: str, expected: bool) -> None:
    assert evaluate(text) is expected


def test_string_escapes() -> None:
    assert compile_expression(r"A == 'it\'s'").evaluate({"A": "it's"})
    assert compile_expression(r'A == "back\\slash"').evaluate({"A": "back\\slash"})
    assert compile_expression(r'A == "a\"b"').evaluate({"A": 'a"b'})


def test_expression_keeps_source() -> None:
    assert compile_expression("A == 'b'").source == "A == 'b'"


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("", 1, "empty expression; write a condition such as CI_BRANCH == 'main'"),
        ("   ", 1, "empty expression; write a condition such as CI_BRANCH == 'main'"),
        (
            "A = 'b'",
            3,
            "unexpected character '='; use '==' to compare or '=~' to match a glob",
        ),
        ("A & B", 3, "unexpected character '&'; use '&&' for 'and'"),
        ("A | B", 3, "unexpected character '|'; use '||' for 'or'"),
        (
            "A $ B",
            3,
            "unexpected character '$'; use a quoted string, a number, a "
            "variable name or an operator",
        ),
        ("A == 'main", 6, "unterminated string; close it with '"),
        (
            'A == "x\\q"',
            8,
            'invalid escape \\q in a string; only \\" and \\\\ are escapes',
        ),
        (
            "A &&",
            5,
            "expected a string, number, variable or '(', found the end of "
            "the expression",
        ),
        (
            "(A",
            3,
            "expected ')' to close the '(' at column 1, found the end of the "
            "expression",
        ),
        (
            "A)",
            2,
            "unexpected ')' after a complete condition; join conditions with && or ||",
        ),
        (
            "A B",
            3,
            "unexpected 'B' after a complete condition; join conditions with && or ||",
        ),
        (
            "A == B == C",
            8,
            "comparisons cannot be chained; join them with &&, as in a < b && b < c",
        ),
        ("__import__('os')", 11, "unexpected '('; function calls are not supported"),
        (
            "os.system('ls')",
            3,
            "unexpected character '.'; use a quoted string, a "
            "number, a variable name or an operator",
        ),
        ("== 'a'", 1, "expected a string, number, variable or '(', found '=='"),
    ],
)
def test_invalid_expression_reports_column(
    text: str, column: int, message: str
) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text)

    assert caught.value.column == column
    assert caught.value.message == message
    assert str(caught.value) == f"column {column}: {message}"


def test_no_eval_of_python() -> None:
    with pytest.raises(ExpressionError, match="function calls are not supported"):
        compile_expression("eval('1')")
    with pytest.raises(ExpressionError, match=r"unexpected character '\.'"):
        compile_expression("__import__('os').system('true')")
    with pytest.raises(ExpressionError, match=r"^column 3: unexpected character '\.'"):
        compile_expression("().__class__.__bases__[0]")


def test_expression_length_bounded() -> None:
    text = "A" * (MAX_EXPRESSION_LENGTH + 1)

    with pytest.raises(
        ExpressionError, match="more than the maximum of 1024"
    ) as caught:
        compile_expression(text)

    assert caught.value.column == MAX_EXPRESSION_LENGTH + 1
    assert compile_expression("A" * MAX_EXPRESSION_LENGTH).evaluate({}) is False


@pytest.mark.parametrize("opener", ["(", "!"])
def test_nesting_depth_bounded(opener: str) -> None:
    closer = ")" if opener == "(" else ""
    allowed = opener * MAX_NESTING_DEPTH + "A" + closer * MAX_NESTING_DEPTH
    too_deep = opener * (MAX_NESTING_DEPTH + 1) + "A" + closer * (MAX_NESTING_DEPTH + 1)

    compile_expression(allowed)
    with pytest.raises(ExpressionError, match="more than 32 levels deep") as caught:
        compile_expression(too_deep)

    assert caught.value.column == MAX_NESTING_DEPTH + 1


def test_long_flat_chain_evaluates() -> None:
    text = " && ".join(["A"] * 200)

    assert compile_expression(text).evaluate({"A": "1"}) is True


@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_expression_error(text: str) -> None:
    try:
        expression = compile_expression(text)
    except ExpressionError:
        return
    assert isinstance(expression.evaluate({"A": "1", "B": "x"}), bool)


@given(
    st.lists(
        st.sampled_from(
            [
                "A",
                "B",
                "'x'",
                "1",
                "-2.5",
                "(",
                ")",
                "!",
                "&&",
                "||",
                "==",
                "!=",
                "<",
                "<=",
                ">",
                ">=",
                "=~",
                "true",
                " ",
            ]
        ),
        max_size=40,
    )
)
def test_token_soup_raises_only_expression_error(tokens: list[str]) -> None:
    try:
        expression = compile_expression(" ".join(tokens))
    except ExpressionError:
        return
    assert isinstance(expression.evaluate({"A": "1"}), bool)


# Glob matching, shared by `=~` and the `on` triggers.


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("main", "main", True),
        ("main", "mainline", False),
        ("release/*", "release/1.0", True),
        ("release/*", "release/1.0/rc", False),
        ("release/*", "release/", True),
        ("release/**", "release/1.0/rc", True),
        ("**", "a/b/c", True),
        ("*", "a/b", False),
        ("feature-?", "feature-1", True),
        ("feature-?", "feature-12", False),
        ("v[0-9].*", "v1.2", True),
        ("v[0-9].*", "vx.2", False),
        ("v[!0-9]*", "vx", True),
        ("v[!0-9]*", "v1", False),
        ("a?b", "a/b", False),
        ("[/]", "/", False),
        ("[abc", "[abc", True),
        ("**/docs", "a/b/docs", True),
        ("a.b", "axb", False),
        ("", "", True),
        ("", "a", False),
    ],
)
def test_glob_match(pattern: str, name: str, expected: bool) -> None:
    assert glob_match(pattern, name) is expected


def test_glob_match_does_not_backtrack() -> None:
    started = time.perf_counter()
    matched = glob_match("*a*a*a*a*a*a*a*a*a*a*b", "a" * 2000)
    elapsed = time.perf_counter() - started

    assert matched is False
    assert elapsed < 1.0
