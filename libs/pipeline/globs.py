"""Glob matching of branch and tag names, where `*` stays within one `/` segment.

`*` matches any run of characters other than `/`, `**` matches any run including
`/`, `?` matches one character other than `/`, and `[abc]`, `[a-z]` and `[!abc]`
match one character of a set. Every other character matches itself.

Matching simulates the pattern as a small automaton instead of translating it to
a regular expression, so its cost is at most pattern length times name length.
A pattern such as `*a*a*a*a*b` cannot make it backtrack.
"""

from functools import lru_cache

# Token kinds of a compiled pattern.
_LITERAL, _ANY_ONE, _STAR, _GLOBSTAR, _CLASS = range(5)

_Token = tuple[int, str, bool]
"""(kind, characters, negated).

`characters` is the literal character, or for a set its ranges as pairs of
characters: `[a-cx]` stores "acxx".
"""


def glob_match(pattern: str, name: str) -> bool:
    """Return whether `name` matches the glob `pattern` as a whole."""
    tokens = _compile(pattern)
    states = _closure(tokens, {0})
    for char in name:
        states = _closure(tokens, _step(tokens, states, char))
        if not states:
            return False
    return len(tokens) in states


@lru_cache(maxsize=256)
def _compile(pattern: str) -> tuple[_Token, ...]:
    tokens: list[_Token] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if pattern.startswith("**", index):
            tokens.append((_GLOBSTAR, "", False))
            index += 2
        elif char == "*":
            tokens.append((_STAR, "", False))
            index += 1
        elif char == "?":
            tokens.append((_ANY_ONE, "", False))
            index += 1
        elif char == "[" and (end := pattern.find("]", index + 2)) != -1:
            tokens.append(_compile_class(pattern[index + 1 : end]))
            index = end + 1
        else:
            # An unclosed `[` falls through to here and matches itself.
            tokens.append((_LITERAL, char, False))
            index += 1
    return tuple(tokens)


def _compile_class(body: str) -> _Token:
    negated = body.startswith("!")
    if negated:
        body = body[1:]
    ranges = []
    index = 0
    while index < len(body):
        if index + 2 < len(body) and body[index + 1] == "-":
            ranges.append(body[index] + body[index + 2])
            index += 3
        else:
            ranges.append(body[index] * 2)
            index += 1
    return (_CLASS, "".join(ranges), negated)


def _in_class(char: str, ranges: str) -> bool:
    return any(ranges[i] <= char <= ranges[i + 1] for i in range(0, len(ranges), 2))


def _step(tokens: tuple[_Token, ...], states: set[int], char: str) -> set[int]:
    following = set()
    for state in states:
        if state == len(tokens):
            continue
        kind = tokens[state][0]
        if kind == _GLOBSTAR or (kind == _STAR and char != "/"):
            following.add(state)
        elif _matches_one(tokens[state], char):
            following.add(state + 1)
    return following


def _matches_one(token: _Token, char: str) -> bool:
    kind, characters, negated = token
    if kind == _LITERAL:
        return char == characters
    if char == "/" or kind not in (_ANY_ONE, _CLASS):
        return False
    return kind == _ANY_ONE or _in_class(char, characters) != negated


def _closure(tokens: tuple[_Token, ...], states: set[int]) -> set[int]:
    """Add the states reached by letting `*` and `**` match nothing."""
    closed = set(states)
    for start in states:
        state = start
        while state < len(tokens) and tokens[state][0] in (_STAR, _GLOBSTAR):
            state += 1
            closed.add(state)
    return closed
