"""A small asynchronous client of the gateway's HTTP API, used by the CLI."""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp


class ApiError(Exception):
    """Raised for an error response of the gateway, with its problem detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail


@dataclass
class ServerSentEvent:
    """One event of an SSE stream."""

    event: str
    data: str
    id: str | None


class GatewayClient:
    """Calls the gateway at `base_url`; use as an async context manager.

    The client reads its own writes: every request carries the highest
    `Stasis-Seq` a write returned so far as `Stasis-Min-Seq`, so the gateway
    waits until its projection has applied that write before it responds.
    """

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        )
        self.min_seq = 0

    async def __aenter__(self) -> "GatewayClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._session.close()

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request and return the decoded JSON (or text) response."""
        headers = {**kwargs.pop("headers", {}), **self._consistency()}
        try:
            async with self._session.request(
                method, self.base_url + path, headers=headers, **kwargs
            ) as resp:
                self._remember(resp)
                if resp.status >= 400:
                    raise ApiError(resp.status, await _detail(resp))
                if resp.content_type == "application/json":
                    return await resp.json()
                return await resp.text()
        except aiohttp.ClientConnectionError as exc:
            raise ApiError(
                0,
                f"cannot reach the gateway at {self.base_url} ({exc}); start it with "
                "`stasis up` or pass --url",
            ) from exc

    async def download(self, path: str, params: dict[str, str], target: Path) -> int:
        """Stream a response body to `target` and return the bytes written."""
        written = 0
        url = self.base_url + path
        async with self._session.get(url, params=params) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, await _detail(resp))
            with target.open("wb") as output:
                async for block in resp.content.iter_chunked(256 * 1024):
                    output.write(block)
                    written += len(block)
        return written

    async def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """Submit a job and return the 202 answer."""
        result: dict[str, Any] = await self.request("POST", "/api/v1/jobs", json=body)
        return result

    async def stream(
        self, job_id: str, last_event_id: str | None = None
    ) -> AsyncIterator[ServerSentEvent]:
        """Yield the SSE events of a job until the server ends the stream."""
        headers = self._consistency()
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        url = f"{self.base_url}/api/v1/jobs/{job_id}/stream"
        async with self._session.get(url, headers=headers) as resp:
            if resp.status >= 400:
                raise ApiError(resp.status, await _detail(resp))
            async for event in parse_sse(resp.content):
                yield event

    def _consistency(self) -> dict[str, str]:
        return {"Stasis-Min-Seq": str(self.min_seq)} if self.min_seq else {}

    def _remember(self, resp: aiohttp.ClientResponse) -> None:
        seq = resp.headers.get("Stasis-Seq", "")
        if seq.isdigit():
            self.min_seq = max(self.min_seq, int(seq))


async def parse_sse(content: aiohttp.StreamReader) -> AsyncIterator[ServerSentEvent]:
    """Parse a text/event-stream body into events; comments are skipped.

    Reads raw blocks rather than lines, because aiohttp's line reader rejects
    lines over 64 KiB and one log chunk can be longer.
    """
    event, event_id = "message", None
    data: list[str] = []
    buffer = b""
    async for block in content.iter_any():
        buffer += block
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8").rstrip("\r")
            if not line:
                if data:
                    yield ServerSentEvent(event, "\n".join(data), event_id)
                event, data = "message", []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value


async def _detail(resp: aiohttp.ClientResponse) -> str:
    text = await resp.text()
    try:
        return str(json.loads(text).get("detail", text))
    except (ValueError, AttributeError):
        return text
