"""The gateway's OpenAPI 3.1 document, built from the msgspec types of its bodies.

Every route the gateway registers has an entry in `OPERATIONS`, keyed by method
and path template; `tests/gateway/test_openapi.py` fails when a route has none.
Bodies that the handlers build as dicts are described by the structs below,
which mirror those dicts field for field.
"""

import importlib
import typing
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from libs.events import AnyEvent, LogChunk

from .auth import AUTHENTICATOR_KEY, Authenticator
from .models import JobAccepted, JobView
from .problems import PROBLEM_TYPE, Problem, ProblemError
from .ratelimit import SSE_ROUTES

API_TITLE = "Stasis CI gateway"
API_VERSION = "1"
_REF = "#/components/schemas/{name}"


class JobList(msgspec.Struct, kw_only=True):
    """A page of jobs, newest first."""

    jobs: list[JobView]
    next: str | None = None
    """URL of the next page; absent on the last page."""


class RunAction(msgspec.Struct, kw_only=True):
    """The response to a cancel or retry: the run it concerns and the append."""

    job_id: str
    run_id: str
    status: str
    seq: int


class StoredEventView(msgspec.Struct, kw_only=True):
    """One event of a job with its stream sequence and storage time."""

    seq: int
    stored_at: datetime | None
    event: AnyEvent


class EventList(msgspec.Struct, kw_only=True):
    """A job's raw events, oldest first."""

    job_id: str
    events: list[StoredEventView]


class LogChunkView(msgspec.Struct, kw_only=True):
    """A log chunk with its logs-stream sequence, to pass back as `since`."""

    seq: int
    chunk: LogChunk


class LogChunks(msgspec.Struct, kw_only=True):
    """A run's log as chunks (`format=json`)."""

    job_id: str
    run_id: str
    chunks: list[LogChunkView]


class Health(msgspec.Struct, kw_only=True):
    """Whether the gateway is connected to NATS and its projection is current."""

    status: typing.Literal["ok", "degraded"]
    nats_connected: bool
    projection_seq: int
    jobs: int


class ArtifactView(msgspec.Struct, kw_only=True):
    """A stored artifact of a run and its download URL."""

    step: str
    name: str
    size: int
    sha256: str
    format: str
    content_type: str
    storage_url: str
    stored_at: datetime
    download: str


class ArtifactList(msgspec.Struct, kw_only=True):
    """The artifacts of one run, with the warnings of their collection."""

    job_id: str
    run_id: str
    artifacts: list[ArtifactView]
    warnings: list[str]


class ArtifactUploaded(msgspec.Struct, kw_only=True):
    """The response to an upload."""

    name: str
    size: int
    sha256: str
    download: str


class StreamEnd(msgspec.Struct, kw_only=True):
    """The data of the SSE `end` event: the job's status when the stream ends."""

    job_id: str
    status: str


SCHEMA_TYPES: tuple[Any, ...] = (
    JobAccepted,
    JobView,
    JobList,
    RunAction,
    EventList,
    LogChunks,
    LogChunk,
    Health,
    ArtifactList,
    ArtifactUploaded,
    StreamEnd,
    Problem,
)


def event_types() -> list[str]:
    """Return the `type` tag of every job event, in the order of the union."""
    return [member.__struct_config__.tag for member in typing.get_args(AnyEvent)]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


def _json(name: str, description: str, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref(name)}},
    }
    if headers:
        response["headers"] = {
            header: {"$ref": f"#/components/headers/{header}"} for header in headers
        }
    return response


def _raw(media_type: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": schema}}}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_TYPE: {"schema": _ref("Problem")}},
    }


ANY_OBJECT: dict[str, Any] = {"type": "object"}
JOB_ID = "job_id"
NOT_FOUND = _problem("No such job, run or artifact.")


def _parameter(
    name: str, where: str, schema: dict[str, Any], description: str, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "schema": schema,
        "description": description,
        **extra,
    }


SEQUENCE = {"type": "integer", "minimum": 0}
PARAMETERS: dict[str, dict[str, Any]] = {
    "job_id": _parameter(
        "job_id",
        "path",
        {"type": "string"},
        "Job id: 26 letters and digits.",
        required=True,
    ),
    "artifact_name": _parameter(
        "name", "path", {"type": "string"}, "Artifact name, as listed.", required=True
    ),
    "min_seq": _parameter(
        "min_seq",
        "query",
        SEQUENCE,
        "Wait (up to 10 s) until the projection has applied this job-events "
        "sequence, e.g. the `Stasis-Seq` of a write, before reading.",
    ),
    "Stasis-Min-Seq": _parameter(
        "Stasis-Min-Seq", "header", SEQUENCE, "The same as `min_seq`."
    ),
    "limit": _parameter(
        "limit",
        "query",
        {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
        "Jobs per page.",
    ),
    "before": _parameter(
        "before", "query", {"type": "string"}, "Return jobs older than this job id."
    ),
    "run": _parameter(
        "run", "query", {"type": "string"}, "Run id; the job's last run by default."
    ),
    "format": _parameter(
        "format",
        "query",
        {"type": "string", "enum": ["text", "plain", "json"], "default": "text"},
        "`text`: the log as written; `plain`: without terminal control codes; "
        "`json`: chunks with their sequences.",
    ),
    "since": _parameter(
        "since",
        "query",
        SEQUENCE,
        "Return only chunks after this logs-stream sequence.",
    ),
    "step": _parameter(
        "step", "query", {"type": "string"}, "Only this step's log; all by default."
    ),
    "last_event_id": _parameter(
        "last_event_id",
        "query",
        {"type": "string", "pattern": r"^[0-9]+:[0-9]+$"},
        "The same as the `Last-Event-ID` header.",
    ),
    "Last-Event-ID": _parameter(
        "Last-Event-ID",
        "header",
        {"type": "string", "pattern": r"^[0-9]+:[0-9]+$"},
        "Resume after this SSE id, `<event seq>:<log seq>`.",
    ),
    "Idempotency-Key": _parameter(
        "Idempotency-Key",
        "header",
        {"type": "string", "minLength": 1},
        "A repeated key within `nats.duplicate_window` returns the first "
        "submission instead of submitting again.",
    ),
    "Range": _parameter(
        "Range", "header", {"type": "string"}, "One byte range, `bytes=first-last`."
    ),
    "upload_name": _parameter(
        "name",
        "query",
        {"type": "string", "pattern": r"^[A-Za-z0-9._-][A-Za-z0-9._ -]{0,199}$"},
        "Name of the artifact to store; no `/` and no `..`.",
        required=True,
    ),
}
READ_JOB = ("job_id", "min_seq", "Stasis-Min-Seq")


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    """The document's entry for one route: summary, parameters and responses."""

    summary: str
    tag: str
    responses: dict[str, dict[str, Any]]
    parameters: tuple[str, ...] = ()
    request_body: dict[str, Any] | None = None
    json_body: str = ""
    """Struct of a JSON request body as `module:Name`, imported only when the
    route is registered, so an entry may come before its handler's module."""
    description: str = ""


def _sse_description() -> str:
    events = ", ".join(f"`{name}`" for name in event_types())
    return (
        "Server-Sent Events of the job until its last run ends. Event types: "
        "`log` (data: a LogChunk); one event per job event, named by its type "
        f"({events}; data: the event); `unknown` (an event this gateway cannot "
        "decode); and `end` (data: a StreamEnd; it has no id). Each id is "
        "`<event seq>:<log seq>`: send the last one back as `Last-Event-ID` to "
        "resume with no gap and no duplicate. A step's log chunks always come "
        "before its `step.finished`."
    )


def _operations() -> dict[tuple[str, str], Operation]:
    return {
        ("post", "/api/v1/jobs"): Operation(
            summary="Submit a job",
            tag="jobs",
            parameters=("Idempotency-Key",),
            json_body="services.gateway.models:JobRequest",
            responses={
                "202": _json("JobAccepted", "Submitted.", ("Location", "Stasis-Seq")),
                "400": _problem("The body is not JSON."),
                "413": _problem("The body exceeds `auth.max_body_bytes`."),
                "422": _problem("The body is not a valid job request."),
            },
        ),
        ("get", "/api/v1/jobs"): Operation(
            summary="List jobs, newest first",
            tag="jobs",
            parameters=("limit", "before"),
            responses={
                "200": _json("JobList", "A page of jobs."),
                "400": _problem("Invalid `limit`."),
            },
        ),
        ("get", "/api/v1/jobs/{job_id}"): Operation(
            summary="Get a job",
            tag="jobs",
            parameters=READ_JOB,
            responses={"200": _json("JobView", "The job."), "404": NOT_FOUND},
        ),
        ("delete", "/api/v1/jobs/{job_id}"): Operation(
            summary="Cancel the job's last run",
            tag="jobs",
            parameters=READ_JOB,
            responses={
                "202": _json("RunAction", "Cancel requested.", ("Stasis-Seq",)),
                "404": NOT_FOUND,
                "409": _problem("The run already finished."),
            },
        ),
        ("post", "/api/v1/jobs/{job_id}/retry"): Operation(
            summary="Retry a failed, timed-out, cancelled or expired job",
            tag="jobs",
            parameters=READ_JOB,
            responses={
                "202": _json("RunAction", "A new run was requested.", ("Stasis-Seq",)),
                "404": NOT_FOUND,
                "409": _problem("The last run cannot be retried, or the job changed."),
            },
        ),
        ("post", "/api/v1/jobs/{job_id}/replay"): Operation(
            summary="Submit a new job copied from this one, with overrides",
            tag="jobs",
            parameters=READ_JOB,
            json_body="services.gateway.replay:ReplayRequest",
            responses={
                "202": _json("JobAccepted", "Submitted.", ("Location", "Stasis-Seq")),
                "400": _problem("The body is not JSON."),
                "404": NOT_FOUND,
                "413": _problem("The body exceeds `auth.max_body_bytes`."),
                "422": _problem("The body is not a valid replay request."),
            },
        ),
        ("get", "/api/v1/jobs/{job_id}/events"): Operation(
            summary="Get the job's raw events",
            tag="jobs",
            parameters=READ_JOB,
            responses={"200": _json("EventList", "The events."), "404": NOT_FOUND},
        ),
        ("get", "/api/v1/jobs/{job_id}/logs"): Operation(
            summary="Get a run's log",
            tag="logs",
            parameters=(*READ_JOB, "run", "format", "since", "step"),
            responses={
                "200": {
                    "description": "The log, as text or as JSON chunks.",
                    "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "application/json": {"schema": _ref("LogChunks")},
                    },
                },
                "400": _problem("Invalid `format`, `since` or `step`."),
                "404": NOT_FOUND,
            },
        ),
        ("get", "/api/v1/jobs/{job_id}/stream"): Operation(
            summary="Follow the job's events and log live (SSE)",
            tag="logs",
            description=_sse_description(),
            parameters=(*READ_JOB, "Last-Event-ID", "last_event_id"),
            responses={
                "200": _raw(
                    "text/event-stream", "The event stream.", {"type": "string"}
                ),
                "400": _problem("Invalid `Last-Event-ID`."),
                "404": NOT_FOUND,
            },
        ),
        ("get", "/api/v1/jobs/{job_id}/artifacts"): Operation(
            summary="List a run's artifacts",
            tag="artifacts",
            parameters=(*READ_JOB, "run"),
            responses={
                "200": _json("ArtifactList", "The artifacts."),
                "404": NOT_FOUND,
            },
        ),
        ("post", "/api/v1/jobs/{job_id}/artifacts"): Operation(
            summary="Upload a file as an artifact of a run",
            tag="artifacts",
            parameters=(*READ_JOB, "run", "upload_name"),
            request_body={
                "required": True,
                "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
            },
            responses={
                "201": _json("ArtifactUploaded", "Stored."),
                "404": NOT_FOUND,
                "413": _problem("The file exceeds `artifacts.max_bytes_per_job`."),
                "422": _problem("Invalid artifact name."),
                "502": _problem("The artifact store failed."),
            },
        ),
        ("get", "/api/v1/jobs/{job_id}/artifacts/{name}"): Operation(
            summary="Download an artifact",
            tag="artifacts",
            parameters=(*READ_JOB, "artifact_name", "run", "Range"),
            responses={
                "200": _raw(
                    "*/*", "The artifact.", {"type": "string", "format": "binary"}
                ),
                "206": _raw(
                    "*/*",
                    "The requested range.",
                    {"type": "string", "format": "binary"},
                ),
                "404": NOT_FOUND,
                "410": _problem("The artifact was removed from the store."),
                "416": _problem("The range lies outside the artifact."),
            },
        ),
        ("get", "/health"): Operation(
            summary="Check the gateway's health",
            tag="service",
            responses={
                "200": _json("Health", "Connected and current."),
                "503": _json("Health", "Not connected, or still replaying."),
            },
        ),
        ("get", "/metrics"): Operation(
            summary="Prometheus metrics of the gateway (with `stasis up`, of all)",
            tag="service",
            responses={
                "200": _raw(
                    "text/plain; version=0.0.4",
                    "The metrics in Prometheus's text format.",
                    {"type": "string"},
                )
            },
        ),
        ("get", "/api/v1/schemas/pipeline.json"): Operation(
            summary="JSON Schema of `.stasis-ci.yaml`",
            tag="schemas",
            responses={"200": _raw("application/json", "The schema.", ANY_OBJECT)},
        ),
        ("get", "/api/v1/schemas/events.json"): Operation(
            summary="JSON Schema of the events and log chunks",
            tag="schemas",
            responses={"200": _raw("application/json", "The schema.", ANY_OBJECT)},
        ),
        ("get", "/api/v1/schemas/asyncapi.json"): Operation(
            summary="AsyncAPI 3.0 document of the NATS subjects and messages",
            tag="schemas",
            responses={"200": _raw("application/json", "The document.", ANY_OBJECT)},
        ),
        ("get", "/api-docs"): Operation(
            summary="This reference, rendered by Scalar",
            tag="docs",
            responses={
                "200": _raw("text/html", "The page.", {"type": "string"}),
                "503": _problem("The Scalar bundle is not installed."),
            },
        ),
        ("get", "/api-docs/openapi.json"): Operation(
            summary="This OpenAPI document",
            tag="docs",
            responses={"200": _raw("application/json", "The document.", ANY_OBJECT)},
        ),
        ("get", "/api-docs/scalar.js"): Operation(
            summary="The Scalar browser bundle the page loads",
            tag="docs",
            responses={
                "200": _raw("text/javascript", "The script.", {"type": "string"}),
                "503": _problem("The Scalar bundle is not installed."),
            },
        ),
    }


OPERATIONS = _operations()

HEADERS: dict[str, dict[str, Any]] = {
    "Location": {"description": "URL of the job.", "schema": {"type": "string"}},
    "Stasis-Seq": {
        "description": "Job-events sequence of the append; pass it as `min_seq`.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "Retry-After": {
        "description": "Seconds until the key may make another request.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    },
    "WWW-Authenticate": {
        "description": "The Bearer challenge (RFC 6750).",
        "schema": {"type": "string"},
    },
}


def registered_routes(app: web.Application) -> set[tuple[str, str]]:
    """Return (method, path template) of every route of `app`, HEAD excluded.

    aiohttp adds a HEAD route beside every GET; HEAD responds like GET without
    a body, so the document leaves it out.
    """
    routes = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method in ("HEAD", "*"):
            continue
        routes.add((route.method.lower(), resource.canonical))
    return routes


def build_openapi(routes: set[tuple[str, str]], auth: Authenticator) -> dict[str, Any]:
    """Return the OpenAPI 3.1 document of `routes` under the auth settings `auth`."""
    paths: dict[str, dict[str, Any]] = {}
    body_types = []
    for method, path in sorted(routes):
        operation = OPERATIONS.get((method, path))
        if operation is None:
            continue  # The coverage test names the route.
        paths.setdefault(path, {})[method] = _operation_object(
            method, path, operation, auth
        )
        if operation.json_body:
            body_types.append(_import_type(operation.json_body))
    _, components = msgspec.json.schema_components(
        (*SCHEMA_TYPES, *body_types), ref_template=_REF
    )
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": API_TITLE,
            "version": API_VERSION,
            "description": (
                "Submit jobs, follow their logs live and fetch their artifacts. "
                "Every error is an RFC 9457 problem details body."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "headers": HEADERS,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
    if auth.enabled:
        document["security"] = [{"ApiKey": []}, {"Bearer": []}]
    return document


def _operation_object(
    method: str, path: str, operation: Operation, auth: Authenticator
) -> dict[str, Any]:
    responses = dict(operation.responses)
    if auth.enabled and not auth.is_public(path):
        responses["401"] = _problem("No API key, or an invalid one.")
        responses["401"]["headers"] = {
            "WWW-Authenticate": {"$ref": "#/components/headers/WWW-Authenticate"}
        }
        if "{job_id}" in path:
            responses["403"] = _problem("The job belongs to another API key.")
        limited = _problem(
            "The key exceeded its rate limit (with `Retry-After`), or its open "
            "SSE streams limit."
            if path in SSE_ROUTES
            else "The key exceeded its rate limit."
        )
        limited["headers"] = {
            "Retry-After": {"$ref": "#/components/headers/Retry-After"}
        }
        responses["429"] = limited
    responses["500"] = _problem("The gateway failed; its log has the cause.")

    result: dict[str, Any] = {
        "operationId": _operation_id(method, path),
        "summary": operation.summary,
        "tags": [operation.tag],
        "responses": dict(sorted(responses.items())),
    }
    if operation.description:
        result["description"] = operation.description
    if operation.parameters:
        result["parameters"] = [PARAMETERS[name] for name in operation.parameters]
    if operation.request_body is not None:
        result["requestBody"] = operation.request_body
    if operation.json_body:
        name = operation.json_body.partition(":")[2]
        result["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(name)}},
        }
    if auth.enabled and auth.is_public(path):
        result["security"] = []
    return result


def _import_type(spec: str) -> Any:
    module_name, _, name = spec.partition(":")
    return getattr(importlib.import_module(module_name), name)


def _operation_id(method: str, path: str) -> str:
    words = [
        part.strip("{}").replace(".", "_").replace("-", "_")
        for part in path.split("/")
        if part and part not in ("api", "v1")
    ]
    return "_".join([method, *words])


def openapi_for(app: web.Application) -> dict[str, Any]:
    """Return the document of `app`'s routes and auth settings."""
    return build_openapi(registered_routes(app), app[AUTHENTICATOR_KEY])


STATIC_DIR = Path(__file__).resolve().parent / "static"
"""Folder that `scripts/build-scalar.sh` writes the Scalar bundle into."""
SCALAR_BUNDLE = "scalar.js"
BUILD_HINT = "run scripts/build-scalar.sh on the gateway's host, then reload"

# The page loads everything from the gateway. Scalar's web fonts, telemetry,
# hosted-service toolbar and AI agent are off (option names of
# @scalar/api-reference 1.76), and the CSP keeps the browser from fetching
# anything from another origin.
_PAGE = """<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Stasis CI API</title>
  </head>
  <body>
    <div id="app"></div>
    <script src="/api-docs/scalar.js"></script>
    <script>
      Scalar.createApiReference("#app", {
        url: "/api-docs/openapi.json",
        withDefaultFonts: false,
        telemetry: false,
        showDeveloperTools: "never",
        agent: { disabled: true },
        hideClientButton: false,
      });
    </script>
  </body>
</html>
"""
_PAGE_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
    "connect-src 'self'"
)


def scalar_bundle() -> Path | None:
    """Return the path of the Scalar bundle, or None when it was not built."""
    path = STATIC_DIR / SCALAR_BUNDLE
    return path if path.is_file() else None


def _bundle_missing() -> ProblemError:
    return ProblemError(
        503,
        "API reference not installed",
        f"the Scalar bundle {STATIC_DIR / SCALAR_BUNDLE} is missing; {BUILD_HINT}. "
        "The OpenAPI document is at /api-docs/openapi.json meanwhile",
    )


async def docs_page(request: web.Request) -> web.Response:
    """Serve the Scalar page that renders the OpenAPI document."""
    if scalar_bundle() is None:
        raise _bundle_missing()
    return web.Response(
        text=_PAGE,
        content_type="text/html",
        headers={"Content-Security-Policy": _PAGE_POLICY},
    )


async def docs_script(request: web.Request) -> web.StreamResponse:
    """Serve the Scalar browser bundle from the gateway's own files."""
    path = scalar_bundle()
    if path is None:
        raise _bundle_missing()
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "text/javascript; charset=utf-8",
            "Cache-Control": "public, max-age=3600",
        },
    )


async def openapi_document(request: web.Request) -> web.Response:
    """Serve the OpenAPI document of this gateway."""
    return web.json_response(openapi_for(request.app))


def add_docs_routes(app: web.Application) -> None:
    """Register the API reference page, its script and the OpenAPI document."""
    app.router.add_get("/api-docs", docs_page)
    app.router.add_get("/api-docs/openapi.json", openapi_document)
    app.router.add_get("/api-docs/scalar.js", docs_script)
