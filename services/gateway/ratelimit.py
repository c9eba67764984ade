"""Request limits of the gateway: a token bucket per API key, open SSE streams
per key, and the 413 response to a body over `auth.max_body_bytes`.

The per-key limits apply only to authenticated requests, so they are off with
`auth.enabled` false and on public paths. State is in memory and per process:
with several gateways behind a balancer, each allows the configured rate.
"""

import contextlib
import math
import time
from collections.abc import Callable, Iterator

from aiohttp import web
from aiohttp.typedefs import Handler

from libs.config.model import AuthConfig
from libs.units import parse_size

from .auth import caller_of, route_path
from .problems import ProblemError, problem

SSE_ROUTES = frozenset({"/api/v1/jobs/{job_id}/stream"})
"""Route templates that respond with a Server-Sent Events stream."""


class TokenBucket:
    """Tokens refilled at `rate` per second up to `capacity`; a request takes one."""

    def __init__(self, capacity: int, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = float(capacity)
        self.updated = now

    def take(self, now: float) -> float:
        """Take a token; return 0.0, or the seconds until one is free when empty."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per key id; `per_minute` 0 turns the limit off."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.burst = max(1, burst)
        self._clock = clock
        # Only keys that authenticated get a bucket, so the map is bounded by
        # the number of configured keys.
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key_id: str) -> float:
        """Take a request from `key_id`'s bucket; return the wait when it is empty."""
        if self.per_minute <= 0:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key_id)
        if bucket is None:
            bucket = TokenBucket(self.burst, self.per_minute / 60.0, now)
            self._buckets[key_id] = bucket
        return bucket.take(now)


class StreamLimiter:
    """Counts open SSE streams per key id; `limit` 0 turns the limit off."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    @contextlib.contextmanager
    def slot(self, key_id: str) -> Iterator[None]:
        """Hold a stream slot of `key_id`; raise ProblemError 429 when none is free."""
        count = self.open.get(key_id, 0)
        if self.limit > 0 and count >= self.limit:
            raise ProblemError(
                429,
                "Too many open streams",
                f"API key {key_id} already has {count} open SSE streams, the "
                f"maximum (auth.max_sse_per_key); close one before opening another",
            )
        self.open[key_id] = count + 1
        try:
            yield
        finally:
            self.open[key_id] -= 1
            if not self.open[key_id]:
                del self.open[key_id]


class RequestLimits:
    """The limits of one gateway, built from `auth`."""

    def __init__(
        self, config: AuthConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_body_bytes = parse_size(config.max_body_bytes)
        self.rate = RateLimiter(config.rate_limit_per_minute, config.burst, clock)
        self.streams = StreamLimiter(config.max_sse_per_key)


LIMITS_KEY = web.AppKey("request_limits", RequestLimits)


@web.middleware
async def apply_limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Apply the caller's rate and stream limits, and return 413 for a large body."""
    limits = request.app[LIMITS_KEY]
    caller = caller_of(request)
    if caller is not None:
        wait = limits.rate.take(caller.key_id)
        if wait > 0:
            return _too_many_requests(request, caller.key_id, limits.rate, wait)
    try:
        if caller is not None and route_path(request) in SSE_ROUTES:
            with limits.streams.slot(caller.key_id):
                return await handler(request)
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        raise ProblemError(
            413,
            "Request body too large",
            f"the request body exceeds auth.max_body_bytes ({limits.max_body_bytes} "
            "bytes); send a smaller body, or upload files as artifacts",
        ) from exc


def _too_many_requests(
    request: web.Request, key_id: str, limiter: RateLimiter, wait: float
) -> web.Response:
    retry_after = max(1, math.ceil(wait))
    response = problem(
        429,
        "Too many requests",
        f"API key {key_id} exceeded {limiter.per_minute} requests per minute "
        f"(auth.rate_limit_per_minute, burst {limiter.burst}); retry after "
        f"{retry_after} s",
        request.path,
    )
    response.headers["Retry-After"] = str(retry_after)
    return response
