"""Pieces of the forwarder that need no server: backoff, Retry-After, batches."""

import json
import random
import time

import pytest

from libs.config import ForwardEndpoint
from services.logsink.forwarder import (
    MAX_RETRY_AFTER,
    Batch,
    TokenBucket,
    backoff_delay,
    parse_retry_after,
    redact_url,
)


class Highest(random.Random):
    """Always draws the upper bound, to show the backoff ceilings."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_ceiling_doubles_then_caps() -> None:
    delays = [backoff_delay(n, 0.5, 30.0, Highest()) for n in range(1, 9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_backoff_jitter_stays_below_ceiling() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(4, 0.5, 30.0, rng) for _ in range(200)]
    assert all(0.0 <= delay <= 4.0 for delay in delays)
    assert len(set(delays)) == 200


def test_retry_after_seconds_and_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("99999999") == MAX_RETRY_AFTER
    date = "Wed, 21 Oct 2015 07:28:10 GMT"
    assert parse_retry_after(date, now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after(date, now=1445412500.0) == 0.0


def test_redact_url_drops_credentials() -> None:
    url = "https://user:pass@logs.example:8443/in?token=abc#x"
    assert redact_url(url) == "https://logs.example:8443/in"


def test_batch_limits_and_body() -> None:
    endpoint = ForwardEndpoint(url="http://127.0.0.1:1/", batch_max_chunks=2)
    batch = Batch()
    batch.add(5, b'{"data":"a"}', None)
    batch.add(6, None, None)  # undecodable: counted in the range, not sent
    assert batch.fits(b'{"data":"b"}', endpoint)
    batch.add(7, b'{"data":"b"}', None)
    assert not batch.fits(b'{"data":"c"}', endpoint)
    assert json.loads(batch.body()) == {
        "batch_id": "5-7",
        "chunks": [{"data": "a"}, {"data": "b"}],
    }


def test_batch_byte_limit() -> None:
    endpoint = ForwardEndpoint(url="http://127.0.0.1:1/", batch_max_bytes=20)
    batch = Batch()
    big = b'"' + b"x" * 30 + b'"'
    assert batch.fits(big, endpoint)  # a first chunk always fits
    batch.add(1, big, None)
    assert not batch.fits(b'"y"', endpoint)


async def test_token_bucket_spaces_requests() -> None:
    bucket = TokenBucket(20.0)
    started = time.monotonic()
    for _ in range(5):
        await bucket.acquire()
    assert time.monotonic() - started >= 4 * 0.05 * 0.9


def test_token_bucket_rejects_zero_rate() -> None:
    with pytest.raises(ValueError, match="rate_limit_per_second 0"):
        TokenBucket(0)
