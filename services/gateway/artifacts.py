"""HTTP handlers for listing, downloading and uploading a run's artifacts."""

import logging
import os
import re
import tempfile
import urllib.parse

from aiohttp import web

from libs.artifacts import (
    ArtifactError,
    ArtifactNotFound,
    ArtifactStore,
    InvalidArtifactKey,
    validate_key,
)
from libs.artifacts.from_config import artifact_key
from libs.events import ArtifactStored
from libs.events.fold import ArtifactRecord, RunState
from libs.events.journal import append

from .api import base_url, job_or_404, json_response
from .keys import CONFIG_KEY, JS_KEY, PROJECTION_KEY
from .problems import ProblemError

log = logging.getLogger(__name__)

STORE_KEY = web.AppKey("artifact_store", ArtifactStore)
UPLOAD_STEP = "_upload"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_NAME = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._ -]{0,199}$")


async def _run_of(request: web.Request) -> tuple[str, RunState]:
    job_id = await job_or_404(request)
    job = request.app[PROJECTION_KEY].get(job_id)
    assert job is not None
    run_id = request.query.get("run", job.last_run.run_id)
    run = job.run(run_id)
    if run is None:
        raise ProblemError(404, "Run not found", f"job {job_id} has no run {run_id!r}")
    return job_id, run


def _download_url(base: str, job_id: str, run_id: str, name: str) -> str:
    quoted = urllib.parse.quote(name)
    return f"{base}/api/v1/jobs/{job_id}/artifacts/{quoted}?run={run_id}"


async def list_artifacts(request: web.Request) -> web.Response:
    """List the artifacts of a job's run (the last run unless `run` is given)."""
    job_id, run = await _run_of(request)
    base = base_url(request)
    items = [
        {
            "step": record.step,
            "name": record.name,
            "size": record.size,
            "sha256": record.sha256,
            "format": record.format,
            "content_type": record.content_type,
            "storage_url": record.storage_url,
            "stored_at": record.stored_at,
            "download": _download_url(base, job_id, run.run_id, record.name),
        }
        for record in run.artifacts
    ]
    return json_response(
        {
            "job_id": job_id,
            "run_id": run.run_id,
            "artifacts": items,
            "warnings": run.warnings,
        }
    )


def _find(run: RunState, name: str) -> ArtifactRecord:
    for record in reversed(run.artifacts):
        if record.name == name:
            return record
    raise ProblemError(
        404,
        "Artifact not found",
        f"run {run.run_id} has no artifact {name!r}; list them at .../artifacts",
    )


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Return the inclusive byte range a `Range` header asks for, or None for all.

    Raises ProblemError 416 when the range lies outside the object.
    """
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None  # RFC 9110: an unparsable Range is ignored.
    first, last = match.groups()
    if not first:
        length = int(last)
        if length == 0:
            raise _unsatisfiable(size)
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> ProblemError:
    error = ProblemError(
        416,
        "Range not satisfiable",
        f"the artifact has {size} bytes; ask for a range inside 0-{max(0, size - 1)}",
    )
    return error


async def download_artifact(request: web.Request) -> web.StreamResponse:
    """Stream one artifact, honouring a single `Range` request."""
    _, run = await _run_of(request)
    record = _find(run, request.match_info["name"])
    store = request.app[STORE_KEY]
    try:
        info = await store.stat(record.key)
    except ArtifactNotFound as exc:
        raise ProblemError(
            410, "Artifact removed", f"artifact {record.name!r} is no longer stored"
        ) from exc
    byte_range = parse_range(request.headers.get("Range", ""), info.size)
    start, end = byte_range or (0, info.size - 1)

    response = web.StreamResponse(status=206 if byte_range else 200)
    response.content_type = record.content_type
    response.content_length = max(0, end - start + 1)
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["ETag"] = f'"{record.sha256}"'
    fallback = _ascii_name(record.name)
    quoted = urllib.parse.quote(record.name)
    response.headers["Content-Disposition"] = (
        f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quoted}"
    )
    if byte_range:
        response.headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    await response.prepare(request)
    if info.size:
        async for block in store.open_range(record.key, start, end):
            await response.write(block)
    await response.write_eof()
    return response


def _ascii_name(name: str) -> str:
    return name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")


async def upload_artifact(request: web.Request) -> web.Response:
    """Store the request body as an artifact of a run, from outside the job."""
    job_id, run = await _run_of(request)
    name = request.query.get("name", "")
    if not _NAME.match(name) or ".." in name:
        raise ProblemError(
            422,
            "Invalid artifact name",
            f"artifact name {name!r} is invalid; pass ?name= with 1 to 200 letters, "
            "digits, spaces, '.', '_' or '-', no '/' and no '..'",
        )
    key = artifact_key(job_id, run.run_id, name)
    try:
        validate_key(key)
    except InvalidArtifactKey as exc:
        raise ProblemError(422, "Invalid artifact name", str(exc)) from exc
    limit = int(request.app[CONFIG_KEY].artifacts.max_bytes_per_job)
    content_type = request.content_type or "application/octet-stream"

    path = await _spool_body(request, limit)
    try:
        stored = await request.app[STORE_KEY].put(key, path, content_type)
    except ArtifactError as exc:
        raise ProblemError(502, "Artifact store failed", str(exc)) from exc
    finally:
        os.unlink(path)

    event = ArtifactStored(
        job_id=job_id,
        run_id=run.run_id,
        step=UPLOAD_STEP,
        name=name,
        key=key,
        size=stored.size,
        sha256=stored.sha256,
        format="file",
        storage_url=stored.url,
        content_type=content_type,
    )
    seq = await append(request.app[JS_KEY], event)
    await request.app[PROJECTION_KEY].wait_for(seq)
    log.info("artifact %s uploaded to run %s of job %s", name, run.run_id, job_id)
    base = base_url(request)
    return json_response(
        {
            "name": name,
            "size": stored.size,
            "sha256": stored.sha256,
            "download": _download_url(base, job_id, run.run_id, name),
        },
        status=201,
    )


async def _spool_body(request: web.Request, limit: int) -> str:
    handle, path = tempfile.mkstemp(prefix="stasis-upload-")
    total = 0
    try:
        with os.fdopen(handle, "wb") as spool:
            async for block in request.content.iter_chunked(256 * 1024):
                total += len(block)
                if total > limit:
                    raise ProblemError(
                        413,
                        "Artifact too large",
                        f"the upload exceeds artifacts.max_bytes_per_job ({limit} "
                        "bytes); raise that setting or upload a smaller file",
                    )
                spool.write(block)
    except BaseException:
        os.unlink(path)
        raise
    return path


def add_artifact_routes(app: web.Application) -> None:
    """Register the artifact routes on `app`."""
    app.router.add_get("/api/v1/jobs/{job_id}/artifacts", list_artifacts)
    app.router.add_post("/api/v1/jobs/{job_id}/artifacts", upload_artifact)
    app.router.add_get("/api/v1/jobs/{job_id}/artifacts/{name}", download_artifact)
