"""Request limits against a real gateway: rate per key, body size, SSE streams."""

import asyncio

import aiohttp
import pytest

from services.gateway.ratelimit import RateLimiter, TokenBucket

from .conftest import (
    AUTH_ON,
    OTHER_KEY,
    USER_KEY,
    GatewayFactory,
    add_job,
    key_id,
    with_key,
)


async def test_rate_limit_is_429_with_retry_after(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    settings = {**AUTH_ON, "auth.rate_limit_per_minute": 6, "auth.burst": 3}
    async with gateway_factory(**settings) as gateway:
        url = f"{gateway.url}/api/v1/jobs"
        for _ in range(3):
            async with http.get(url, headers=with_key(USER_KEY)) as response:
                assert response.status == 200
        async with http.get(url, headers=with_key(USER_KEY)) as response:
            body = await response.json(content_type=None)
            assert response.status == 429
            assert response.content_type == "application/problem+json"
            assert response.headers["Retry-After"] in {"9", "10"}
            assert "auth.rate_limit_per_minute" in body["detail"]
        async with http.get(url, headers=with_key(OTHER_KEY)) as response:
            assert response.status == 200
        async with http.get(f"{gateway.url}/health") as response:
            assert response.status == 200


async def test_rate_limit_off_with_auth_off(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    settings = {"auth.rate_limit_per_minute": 1, "auth.burst": 1}
    async with gateway_factory(**settings) as gateway:
        for _ in range(5):
            async with http.get(f"{gateway.url}/api/v1/jobs") as response:
                assert response.status == 200


def test_token_bucket_refills_at_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert limiter.take("k") == 0.0
    assert limiter.take("k") == 0.0
    assert limiter.take("k") == pytest.approx(1.0)
    now[0] = 0.5
    assert limiter.take("k") == pytest.approx(0.5)
    now[0] = 1.0
    assert limiter.take("k") == 0.0
    now[0] = 100.0
    assert limiter.take("k") == 0.0
    assert limiter.take("k") == 0.0
    assert limiter.take("k") > 0.0


def test_token_bucket_never_exceeds_capacity() -> None:
    bucket = TokenBucket(capacity=3, rate=10.0, now=0.0)
    bucket.take(1_000.0)
    assert bucket.tokens == pytest.approx(2.0)


def test_zero_rate_turns_limit_off() -> None:
    limiter = RateLimiter(per_minute=0, burst=1)
    assert all(limiter.take("k") == 0.0 for _ in range(100))


@pytest.mark.parametrize("auth_enabled", [False, True], ids=["auth-off", "auth-on"])
async def test_large_body_is_413_problem(
    gateway_factory: GatewayFactory,
    http: aiohttp.ClientSession,
    auth_enabled: bool,
) -> None:
    settings = {**AUTH_ON, "auth.enabled": auth_enabled, "auth.max_body_bytes": "1k"}
    async with gateway_factory(**settings) as gateway:
        body = b'{"repository": {"url": "/repo"}, "env": {"A": "' + b"x" * 2048 + b'"}}'
        async with http.post(
            f"{gateway.url}/api/v1/jobs",
            data=body,
            headers={**with_key(USER_KEY), "Content-Type": "application/json"},
        ) as response:
            problem = await response.json(content_type=None)
            assert response.status == 413
            assert response.content_type == "application/problem+json"
            assert "auth.max_body_bytes (1024 bytes)" in problem["detail"]


async def test_sse_streams_per_key_are_limited(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    settings = {**AUTH_ON, "auth.max_sse_per_key": 1}
    async with gateway_factory(**settings) as gateway:
        job_id = await add_job(gateway, submitted_by=key_id(USER_KEY))
        stream_url = f"{gateway.url}/api/v1/jobs/{job_id}/stream"

        # No executor runs, so the job never ends and the stream stays open.
        first = await http.get(stream_url, headers=with_key(USER_KEY))
        assert first.status == 200
        assert first.content_type == "text/event-stream"
        async with http.get(stream_url, headers=with_key(USER_KEY)) as second:
            body = await second.json(content_type=None)
            assert second.status == 429
            assert "auth.max_sse_per_key" in body["detail"]

        # The server frees the slot once it notices the client left, so the next
        # stream may need a few tries.
        first.close()
        async with asyncio.timeout(10):
            while True:
                third = await http.get(stream_url, headers=with_key(USER_KEY))
                if third.status != 429:
                    break
                third.close()
                await asyncio.sleep(0.1)
        assert third.status == 200
        third.close()
