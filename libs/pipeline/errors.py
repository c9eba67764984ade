"""Exceptions raised while loading a pipeline file or compiling an `if` expression.

ValueError
├── PipelineError     the file is invalid; `.issues` lists every problem found
└── ExpressionError   an `if` expression is invalid; `.column` is 1-based
"""

import msgspec


class PipelineIssue(msgspec.Struct, frozen=True):
    """One problem in a pipeline file, with where it is and how to fix it.

    `path` is the dotted key path, such as `steps.build.timeout` or
    `steps.build.scripts[0]`, and is empty for the document as a whole. `line` and
    `column` are 1-based, or None when the problem has no place in the file.
    """

    path: str
    line: int | None
    column: int | None
    message: str

    def format(self, source: str) -> str:
        """Format as `source:line:column: path: message`, leaving out unknown parts."""
        location = source
        if self.line is not None:
            location += f":{self.line}"
            if self.column is not None:
                location += f":{self.column}"
        if self.path:
            return f"{location}: {self.path}: {self.message}"
        return f"{location}: {self.message}"


class PipelineError(ValueError):
    """Raised by `load_pipeline` with every problem found in the file at once."""

    def __init__(self, source: str, issues: list[PipelineIssue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__("\n".join(issue.format(source) for issue in issues))


class ExpressionError(ValueError):
    """Raised for an `if` expression that cannot be parsed or is too large."""

    def __init__(self, message: str, column: int) -> None:
        self.message = message
        self.column = column
        super().__init__(f"column {column}: {message}")
