"""API keys against a real gateway: 401, 403, key files, public paths, logs."""

import asyncio
import hashlib
import hmac
import logging
from pathlib import Path

import aiohttp
import pytest

from libs.config import load_config
from services.gateway import Gateway
from services.gateway import auth as auth_module
from services.gateway.auth import Authenticator, KeyConfigError, load_keys

from .conftest import (
    ADMIN_KEY,
    OTHER_KEY,
    USER_KEY,
    GatewayFactory,
    add_job,
    key_id,
    with_key,
)


async def test_auth_off_opens_everything(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async with gateway_factory() as gateway:
        job_id = await add_job(gateway, submitted_by=None)
        async with http.get(f"{gateway.url}/api/v1/jobs") as response:
            assert response.status == 200
        async with http.get(f"{gateway.url}/api/v1/jobs/{job_id}") as response:
            assert response.status == 200


async def test_missing_key_is_401_with_challenge(
    secured: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{secured.url}/api/v1/jobs") as response:
        body = await response.json(content_type=None)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="stasis"'
        assert response.content_type == "application/problem+json"
        assert body["title"] == "Missing API key"
        assert body["status"] == 401


async def test_invalid_key_is_401_invalid_token(
    secured: Gateway, http: aiohttp.ClientSession
) -> None:
    headers = with_key("not-a-key-0123456789abcdef")
    async with http.get(f"{secured.url}/api/v1/jobs", headers=headers) as response:
        assert response.status == 401
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": USER_KEY},
        {"Authorization": f"Bearer {USER_KEY}"},
        {"Authorization": f"bearer {USER_KEY}"},
    ],
    ids=["x-api-key", "bearer", "bearer-lowercase"],
)
async def test_key_accepted_in_either_header(
    secured: Gateway, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    async with http.get(f"{secured.url}/api/v1/jobs", headers=headers) as response:
        assert response.status == 200


async def test_basic_authorization_is_not_a_key(
    secured: Gateway, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"Basic {USER_KEY}"}
    async with http.get(f"{secured.url}/api/v1/jobs", headers=headers) as response:
        assert response.status == 401


async def test_default_public_paths_need_no_key(
    secured: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{secured.url}/health") as response:
        assert response.status == 200
    async with http.get(f"{secured.url}/api-docs/openapi.json") as response:
        assert response.status == 200


async def test_unknown_path_needs_key(
    secured: Gateway, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{secured.url}/no/such/path") as response:
        assert response.status == 401
    async with http.get(f"{secured.url}/no/such/path", headers=with_key(USER_KEY)) as r:
        assert r.status == 404


async def test_public_path_prefix_is_not_a_word_prefix(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    settings = {
        "auth.enabled": True,
        "auth.api_keys": [USER_KEY],
        "auth.public_paths": ["/api/v1/jobs/x", "/api-docs/openapi.json"],
    }
    async with gateway_factory(**settings) as gateway:
        async with http.get(f"{gateway.url}/health") as response:
            assert response.status == 401
        async with http.get(f"{gateway.url}/api-docs/openapi.json") as response:
            assert response.status == 200
        # The route template, not the raw path, decides: `/api/v1/jobs/x` is
        # the `{job_id}` route, which is not public.
        async with http.get(f"{gateway.url}/api/v1/jobs/x") as response:
            assert response.status == 401


async def test_dot_segments_do_not_reach_private_routes(
    secured: Gateway,
) -> None:
    # Send the raw request line so no client normalizes the path first.
    reader, writer = await _open(secured.port)
    writer.write(
        b"GET /api-docs/../api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert b" 200 " not in status_line


async def _open(
    port: int | None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert port is not None
    return await asyncio.open_connection("127.0.0.1", port)


async def test_job_of_another_key_is_403(
    secured: Gateway, http: aiohttp.ClientSession
) -> None:
    job_id = await add_job(secured, submitted_by=key_id(USER_KEY))
    job_url = f"{secured.url}/api/v1/jobs/{job_id}"

    async with http.get(job_url, headers=with_key(OTHER_KEY)) as response:
        body = await response.json(content_type=None)
        assert response.status == 403
        assert key_id(OTHER_KEY) in body["detail"]
        assert OTHER_KEY not in body["detail"]
    async with http.get(f"{job_url}/artifacts", headers=with_key(OTHER_KEY)) as r:
        assert r.status == 403
    async with http.delete(job_url, headers=with_key(OTHER_KEY)) as response:
        assert response.status == 403
    async with http.get(job_url, headers=with_key(USER_KEY)) as response:
        assert response.status == 200
    async with http.get(job_url, headers=with_key(ADMIN_KEY)) as response:
        assert response.status == 200


async def test_job_without_owner_is_admin_only(
    secured: Gateway, http: aiohttp.ClientSession
) -> None:
    job_id = await add_job(secured, submitted_by=None)
    job_url = f"{secured.url}/api/v1/jobs/{job_id}"
    async with http.get(job_url, headers=with_key(USER_KEY)) as response:
        assert response.status == 403
    async with http.get(job_url, headers=with_key(ADMIN_KEY)) as response:
        assert response.status == 200


async def test_unknown_job_is_still_404(
    secured: Gateway, http: aiohttp.ClientSession
) -> None:
    url = f"{secured.url}/api/v1/jobs/01J00000000000000000000000"
    async with http.get(url, headers=with_key(USER_KEY)) as response:
        assert response.status == 404


def test_key_file_with_comments_hashes_and_admin(tmp_path: Path) -> None:
    hashed_key = "hashed-key-0123456789abcdef"
    digest = hashlib.sha256(hashed_key.encode()).hexdigest()
    key_file = tmp_path / "keys"
    key_file.write_text(
        "# keys of the build farm\n"
        "\n"
        f"  {USER_KEY}  \n"
        f"sha256:{digest.upper()}\n"
        "   # indented comment\n"
        f"admin:{ADMIN_KEY}\n"
        f"admin: sha256:{hashlib.sha256(OTHER_KEY.encode()).hexdigest()}\n"
    )
    config = load_config(
        environ={},
        overrides={"auth.enabled": True, "auth.api_key_file": str(key_file)},
    )
    authenticator = Authenticator.from_config(config.auth)

    user = authenticator.identify(USER_KEY)
    hashed = authenticator.identify(hashed_key)
    admin = authenticator.identify(ADMIN_KEY)
    hashed_admin = authenticator.identify(OTHER_KEY)
    assert user is not None and not user.admin
    assert hashed is not None and hashed.key_id == digest[:8]
    assert admin is not None and admin.admin
    assert hashed_admin is not None and hashed_admin.admin
    assert authenticator.identify("# keys of the build farm") is None
    assert authenticator.identify(f"sha256:{digest}") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("short-key", "at least 16 characters"),
        ("sha256:abc123", "64 hex digits"),
        ("admin:sha256:" + "zz" * 32, "64 hex digits"),
    ],
)
def test_bad_key_file_line_names_line_not_key(
    tmp_path: Path, line: str, message: str
) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"# first\n{USER_KEY}\n{line}\n")
    config = load_config(
        environ={},
        overrides={"auth.enabled": True, "auth.api_key_file": str(key_file)},
    )
    with pytest.raises(KeyConfigError, match=message) as error:
        load_keys(config.auth)
    assert "line 3" in str(error.value)
    assert line not in str(error.value)


def test_missing_key_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    config = load_config(
        environ={},
        overrides={"auth.enabled": True, "auth.api_key_file": str(path)},
    )
    with pytest.raises(KeyConfigError, match=r"cannot read auth\.api_key_file"):
        load_keys(config.auth)


def test_enabled_without_keys_is_rejected() -> None:
    config = load_config(environ={}, overrides={"auth.enabled": True})
    with pytest.raises(KeyConfigError, match="no key is configured"):
        Authenticator.from_config(config.auth)


def test_every_stored_key_is_compared_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = load_config(
        environ={},
        overrides={
            "auth.enabled": True,
            "auth.api_keys": [USER_KEY, OTHER_KEY],
            "auth.admin_keys": [ADMIN_KEY],
        },
    )
    authenticator = Authenticator.from_config(config.auth)
    calls: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    for presented in (USER_KEY, ADMIN_KEY, "wrong-key-0123456789abcdef"):
        calls.clear()
        authenticator.identify(presented)
        assert len(calls) == 3, presented
        assert all(len(a) == len(b) == 32 for a, b in calls)
        assert all(a == hashlib.sha256(presented.encode()).digest() for a, _ in calls)


async def test_keys_never_reach_the_logs(
    secured: Gateway,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # `stasis` quiets the access log below DEBUG; this test needs its lines.
    caplog.set_level(logging.DEBUG, logger="aiohttp.access")
    wrong = "wrong-key-0123456789abcdef"
    requests = [
        {"X-API-Key": USER_KEY},
        {"Authorization": f"Bearer {ADMIN_KEY}"},
        {"X-API-Key": wrong},
        {"Authorization": f"Bearer {wrong}"},
    ]
    for headers in requests:
        async with http.get(f"{secured.url}/api/v1/jobs", headers=headers) as r:
            await r.read()

    access = [r for r in caplog.records if r.name == "aiohttp.access"]
    assert len(access) >= len(requests), "the access log recorded no request"
    assert any("GET /api/v1/jobs" in r.getMessage() for r in access)
    assert any("invalid API key" in r.getMessage() for r in caplog.records)
    for key in (USER_KEY, ADMIN_KEY, wrong):
        assert key not in caplog.text
