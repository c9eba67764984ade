"""Error responses in one JSON shape: RFC 9457 problem details."""

import msgspec
from aiohttp import web

PROBLEM_TYPE = "application/problem+json"


class Problem(msgspec.Struct, kw_only=True):
    """An RFC 9457 problem details body."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None


def problem(
    status: int, title: str, detail: str, instance: str | None = None
) -> web.Response:
    """Return a problem-details response; `detail` names the value and the fix."""
    body = Problem(title=title, status=status, detail=detail, instance=instance)
    return web.Response(
        status=status, body=msgspec.json.encode(body), content_type=PROBLEM_TYPE
    )


class ProblemError(Exception):
    """Raised inside a handler to answer with a problem-details response."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail

    def response(self, instance: str | None = None) -> web.Response:
        """Return the response this error stands for."""
        return problem(self.status, self.title, self.detail, instance)
