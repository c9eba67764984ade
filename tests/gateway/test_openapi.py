"""The OpenAPI document and the Scalar page, fetched from a real gateway."""

from pathlib import Path

import aiohttp
import pytest

from services.gateway import Gateway
from services.gateway import openapi as openapi_module
from services.gateway.openapi import event_types, registered_routes

from .conftest import AUTH_ON, GatewayFactory

METHODS = {"get", "post", "put", "patch", "delete"}


async def fetch_document(gateway: Gateway, http: aiohttp.ClientSession) -> dict:
    async with http.get(f"{gateway.url}/api-docs/openapi.json") as response:
        assert response.status == 200
        return await response.json()  # type: ignore[no-any-return]


async def test_document_covers_every_route(
    secured: Gateway, http: aiohttp.ClientSession
) -> None:
    document = await fetch_document(secured, http)
    documented = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }
    routes = registered_routes(secured.make_app())
    assert routes, "the gateway registered no route"
    assert routes - documented == set(), "routes missing from OPERATIONS"
    assert documented - routes == set(), "documented routes that do not exist"


async def test_document_is_openapi_3_1(
    secured: Gateway, http: aiohttp.ClientSession
) -> None:
    document = await fetch_document(secured, http)
    assert document["openapi"] == "3.1.0"
    for name in ("JobRequest", "JobAccepted", "JobView", "Problem", "LogChunk"):
        assert name in document["components"]["schemas"]


async def test_every_error_is_a_problem(
    secured: Gateway, http: aiohttp.ClientSession
) -> None:
    document = await fetch_document(secured, http)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) < 400 or (status == "503" and path == "/health"):
                    continue
                content = response["content"]
                assert list(content) == ["application/problem+json"], (
                    method,
                    path,
                    status,
                )


async def test_security_follows_public_paths(
    secured: Gateway, http: aiohttp.ClientSession
) -> None:
    document = await fetch_document(secured, http)
    paths = document["paths"]
    assert document["security"] == [{"ApiKey": []}, {"Bearer": []}]
    assert paths["/health"]["get"]["security"] == []
    assert paths["/api-docs/openapi.json"]["get"]["security"] == []
    assert "security" not in paths["/api/v1/jobs"]["get"]
    assert "401" in paths["/api/v1/jobs"]["get"]["responses"]
    assert "403" in paths["/api/v1/jobs/{job_id}"]["get"]["responses"]
    assert "429" in paths["/api/v1/jobs/{job_id}/stream"]["get"]["responses"]


async def test_auth_off_documents_no_key_errors(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession
) -> None:
    async with gateway_factory() as gateway:
        document = await fetch_document(gateway, http)
    assert "security" not in document
    assert "401" not in document["paths"]["/api/v1/jobs"]["get"]["responses"]


async def test_stream_documents_every_sse_event(
    secured: Gateway, http: aiohttp.ClientSession
) -> None:
    document = await fetch_document(secured, http)
    stream = document["paths"]["/api/v1/jobs/{job_id}/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    tags = event_types()
    assert "job.submitted" in tags
    assert "run.finished" in tags
    for name in [*tags, "log", "end", "unknown"]:
        assert f"`{name}`" in stream["description"], name


@pytest.fixture
def bundle_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the gateway at an empty static folder for the Scalar bundle."""
    static = tmp_path / "static"
    static.mkdir()
    monkeypatch.setattr(openapi_module, "STATIC_DIR", static)
    return static


async def test_docs_page_without_bundle_is_503(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, bundle_dir: Path
) -> None:
    async with gateway_factory(**AUTH_ON) as gateway:
        for path in ("/api-docs", "/api-docs/scalar.js"):
            async with http.get(f"{gateway.url}{path}") as response:
                problem = await response.json(content_type=None)
                assert response.status == 503, path
                assert response.content_type == "application/problem+json"
                assert "scripts/build-scalar.sh" in problem["detail"]


async def test_docs_page_loads_local_script(
    gateway_factory: GatewayFactory, http: aiohttp.ClientSession, bundle_dir: Path
) -> None:
    script = b"window.Scalar = {createApiReference() {}};\n"
    (bundle_dir / "scalar.js").write_bytes(script)
    async with gateway_factory(**AUTH_ON) as gateway:
        async with http.get(f"{gateway.url}/api-docs") as response:
            page = await response.text()
            assert response.status == 200
            assert response.content_type == "text/html"
            assert "connect-src 'self'" in response.headers["Content-Security-Policy"]
        assert '<script src="/api-docs/scalar.js"></script>' in page
        assert 'url: "/api-docs/openapi.json"' in page
        assert "http://" not in page
        assert "https://" not in page
        async with http.get(f"{gateway.url}/api-docs/scalar.js") as response:
            assert response.status == 200
            assert response.content_type == "text/javascript"
            assert await response.read() == script


async def test_built_bundle_defines_scalar(
    secured: Gateway, http: aiohttp.ClientSession
) -> None:
    if openapi_module.scalar_bundle() is None:
        pytest.skip("the Scalar bundle is not built; run scripts/build-scalar.sh")
    async with http.get(f"{secured.url}/api-docs/scalar.js") as response:
        script = await response.read()
        assert response.status == 200
    assert b"window.Scalar=" in script.replace(b" ", b"")
    assert b"sourceMappingURL" not in script[-200:]
