"""The `if` expression language of pipeline steps: tokenizer, parser and evaluator.

Grammar, lowest precedence first:

    expression  := and ( "||" and )*
    and         := not ( "&&" not )*
    not         := "!" not | comparison
    comparison  := operand ( ("==" | "!=" | "<" | "<=" | ">" | ">=" | "=~") operand )?
    operand     := string | number | "true" | "false" | variable | "(" expression ")"

Strings are single- or double-quoted, with `\\` escaping the quote or a backslash.
Numbers are decimal (`3`, `-1.5`). A variable is a name such as `CI_BRANCH`, and an
unset variable is the empty string. The text is never handed to `eval`: only
these tokens exist, so `__import__('os')` fails to parse.
"""

import operator
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .errors import ExpressionError
from .globs import glob_match

MAX_EXPRESSION_LENGTH = 1024
"""Maximum length of an expression, in characters."""
MAX_NESTING_DEPTH = 32
"""Maximum nesting of parentheses and `!` operators."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_OPERATORS = ("==", "!=", "<=", ">=", "=~", "&&", "||", "<", ">", "!", "(", ")")
_COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">=", "=~"})
_FALSE_TEXTS = frozenset({"", "0", "false"})
_HINTS = {
    "=": "use '==' to compare or '=~' to match a glob",
    "&": "use '&&' for 'and'",
    "|": "use '||' for 'or'",
}

Value = str | bool


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "string", "number", "name", "end" or the operator itself
    text: str
    column: int


@dataclass(frozen=True, slots=True)
class _Literal:
    value: Value


@dataclass(frozen=True, slots=True)
class _Variable:
    name: str


@dataclass(frozen=True, slots=True)
class _Not:
    operand: "_Node"


@dataclass(frozen=True, slots=True)
class _Logical:
    operator: str  # "&&" or "||"
    operands: tuple["_Node", ...]


@dataclass(frozen=True, slots=True)
class _Comparison:
    operator: str
    left: "_Node"
    right: "_Node"


_Node = _Literal | _Variable | _Not | _Logical | _Comparison


class Expression:
    """A compiled `if` expression, which can be evaluated any number of times."""

    __slots__ = ("_tree", "source")

    def __init__(self, source: str, tree: _Node) -> None:
        self.source = source
        self._tree = tree

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def evaluate(self, variables: Mapping[str, str]) -> bool:
        """Evaluate against `variables`, where a missing variable is "" (empty)."""
        return is_true(_evaluate(self._tree, variables))


@lru_cache(maxsize=512)
def compile_expression(text: str) -> Expression:
    """Parse `text`, raising ExpressionError with a 1-based column if it is invalid."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(
            f"expression is {len(text)} characters long, more than the maximum of "
            f"{MAX_EXPRESSION_LENGTH}; split the condition or move logic to a script",
            MAX_EXPRESSION_LENGTH + 1,
        )
    parser = _Parser(_tokenize(text))
    return Expression(text, parser.parse())


def is_true(value: Value) -> bool:
    """Return the truth of a value: text is true unless it is "", "0" or "false"."""
    if isinstance(value, bool):
        return value
    return value not in _FALSE_TEXTS


def _tokenize(text: str) -> list[_Token]:
    tokens = []
    index = 0
    while index < len(text):
        char = text[index]
        if char.isspace():
            index += 1
            continue
        if char in "'\"":
            token, index = _read_string(text, index)
        elif match := _NUMBER.match(text, index):
            token = _Token("number", match.group(), index + 1)
            index = match.end()
        elif match := _NAME.match(text, index):
            token = _Token("name", match.group(), index + 1)
            index = match.end()
        else:
            operator = next((op for op in _OPERATORS if text.startswith(op, index)), "")
            if not operator:
                raise ExpressionError(_unexpected_character(char), index + 1)
            token = _Token(operator, operator, index + 1)
            index += len(operator)
        tokens.append(token)
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


def _unexpected_character(char: str) -> str:
    hint = _HINTS.get(
        char, "use a quoted string, a number, a variable name or an operator"
    )
    return f"unexpected character {char!r}; {hint}"


def _read_string(text: str, start: int) -> tuple[_Token, int]:
    quote = text[start]
    chars: list[str] = []
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == quote:
            return _Token("string", "".join(chars), start + 1), index + 1
        if char == "\\":
            escaped = text[index + 1 : index + 2]
            if escaped not in (quote, "\\"):
                raise ExpressionError(
                    f"invalid escape \\{escaped} in a string; only \\{quote} and "
                    "\\\\ are escapes",
                    index + 1,
                )
            chars.append(escaped)
            index += 2
            continue
        chars.append(char)
        index += 1
    raise ExpressionError(f"unterminated string; close it with {quote}", start + 1)


class _Parser:
    """Recursive-descent parser over the token list, one method per grammar rule."""

    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._position = 0
        self._depth = 0

    def parse(self) -> _Node:
        if self._peek().kind == "end":
            raise ExpressionError(
                "empty expression; write a condition such as CI_BRANCH == 'main'", 1
            )
        tree = self._expression()
        token = self._peek()
        if token.kind != "end":
            raise ExpressionError(_unexpected_after_operand(token), token.column)
        return tree

    def _peek(self) -> _Token:
        return self._tokens[self._position]

    def _advance(self) -> _Token:
        token = self._tokens[self._position]
        self._position += 1
        return token

    def _expression(self) -> _Node:
        return self._logical("||", self._and)

    def _and(self) -> _Node:
        return self._logical("&&", self._not)

    def _logical(self, operator: str, parse_operand: Callable[[], _Node]) -> _Node:
        operands = [parse_operand()]
        while self._peek().kind == operator:
            self._advance()
            operands.append(parse_operand())
        if len(operands) == 1:
            return operands[0]
        return _Logical(operator, tuple(operands))

    def _not(self) -> _Node:
        if self._peek().kind != "!":
            return self._comparison()
        token = self._advance()
        with self._nested(token):
            return _Not(self._not())

    def _comparison(self) -> _Node:
        left = self._operand()
        if self._peek().kind not in _COMPARISONS:
            return left
        operator = self._advance().kind
        right = self._operand()
        token = self._peek()
        if token.kind in _COMPARISONS:
            raise ExpressionError(
                "comparisons cannot be chained; join them with &&, "
                "as in a < b && b < c",
                token.column,
            )
        return _Comparison(operator, left, right)

    def _operand(self) -> _Node:
        token = self._advance()
        if token.kind in ("string", "number"):
            return _Literal(token.text)
        if token.kind == "name":
            if token.text in ("true", "false"):
                return _Literal(token.text == "true")
            return _Variable(token.text)
        if token.kind == "(":
            with self._nested(token):
                inner = self._expression()
            closing = self._advance()
            if closing.kind != ")":
                raise ExpressionError(
                    f"expected ')' to close the '(' at column {token.column}, "
                    f"found {_describe(closing)}",
                    closing.column,
                )
            return inner
        raise ExpressionError(
            f"expected a string, number, variable or '(', found {_describe(token)}",
            token.column,
        )

    @contextmanager
    def _nested(self, token: _Token) -> Iterator[None]:
        self._depth += 1
        if self._depth > MAX_NESTING_DEPTH:
            raise ExpressionError(
                f"expression nests parentheses and '!' more than "
                f"{MAX_NESTING_DEPTH} levels deep; simplify it",
                token.column,
            )
        try:
            yield
        finally:
            self._depth -= 1


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the expression"
    if token.kind == "string":
        return f"the string {token.text!r}"
    return repr(token.text)


def _unexpected_after_operand(token: _Token) -> str:
    if token.kind == "(":
        return "unexpected '('; function calls are not supported"
    return (
        f"unexpected {_describe(token)} after a complete condition; "
        "join conditions with && or ||"
    )


def _evaluate(node: _Node, variables: Mapping[str, str]) -> Value:
    if isinstance(node, _Literal):
        return node.value
    if isinstance(node, _Variable):
        return variables.get(node.name, "")
    if isinstance(node, _Not):
        return not is_true(_evaluate(node.operand, variables))
    if isinstance(node, _Logical):
        # all() and any() stop at the first deciding operand, like && and || do.
        results = (is_true(_evaluate(item, variables)) for item in node.operands)
        return all(results) if node.operator == "&&" else any(results)
    left = _as_text(_evaluate(node.left, variables))
    right = _as_text(_evaluate(node.right, variables))
    return _compare(node.operator, left, right)


def _as_text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _compare(operator: str, left: str, right: str) -> bool:
    if operator == "=~":
        return glob_match(right, left)
    if _NUMBER.fullmatch(left) and _NUMBER.fullmatch(right):
        return _ORDER[operator](float(left), float(right))
    return _ORDER[operator](left, right)


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
