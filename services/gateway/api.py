"""HTTP handlers of the gateway's `/api/v1` routes and `/health`."""

import hashlib
import logging

import msgspec
from aiohttp import web
from nats.js import JetStreamContext

from libs.events import (
    CancelRequested,
    JobSubmitted,
    Repository,
    RunRequested,
    StreamConflict,
    decode_chunk,
    decode_event,
    new_id,
    subjects,
)
from libs.events.asyncapi import asyncapi_document
from libs.events.fold import RETRYABLE
from libs.events.ids import is_valid_id
from libs.events.journal import append, read_job, read_subject
from libs.events.schema import events_json_schema
from libs.pipeline import pipeline_json_schema
from libs.secrets import JobSecrets
from libs.telemetry.http import GATEWAY_METRICS_KEY
from libs.telemetry.logformat import job_fields
from libs.telemetry.tracing import inject_trace_context, set_job_attributes
from services.executor.capture import strip_control
from services.executor.credentials import Credentials
from services.executor.logs import chunk_bytes

from .auth import caller_id, caller_of, may_access

# Re-exported: handlers in other modules take the keys from here too.
from .keys import CONFIG_KEY as CONFIG_KEY
from .keys import JS_KEY as JS_KEY
from .keys import PROJECTION_KEY as PROJECTION_KEY
from .keys import VAULT_KEY as VAULT_KEY
from .models import (
    JobAccepted,
    JobRequest,
    job_links,
    job_view,
    validate_request,
)
from .problems import ProblemError
from .replay import replay_job
from .sse import JobStream, parse_last_event_id

log = logging.getLogger(__name__)


_request_decoder = msgspec.json.Decoder(JobRequest)
_encoder = msgspec.json.Encoder()
MAX_PAGE = 200
REQUEST_DIGEST_HEADER = "Stasis-Request-Digest"
"""SHA-256 of a submission's body, to tell a retried request from a reused key."""


def is_number(text: str) -> bool:
    """Tell whether `text` is a whole number in ASCII digits.

    `str.isdigit` also accepts digits such as "²" that `int` rejects.
    """
    return text.isascii() and text.isdecimal()


def json_response(value: object, status: int = 200, **headers: str) -> web.Response:
    """Return a JSON response of `value`, encoded with msgspec."""
    return web.Response(
        status=status,
        body=_encoder.encode(value),
        content_type="application/json",
        headers=headers,
    )


def base_url(request: web.Request) -> str:
    """Return the public base URL for links in responses."""
    configured = request.app[CONFIG_KEY].server.public_url
    return (
        configured.rstrip("/") if configured else f"{request.scheme}://{request.host}"
    )


async def submit_job(request: web.Request) -> web.Response:
    """Validate a job, append `job.submitted` and return 202 with its ids."""
    body = await request.read()
    try:
        job_request = _request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise ProblemError(422, "Invalid job request", f"{exc}") from exc
    except msgspec.DecodeError as exc:
        raise ProblemError(
            400, "Malformed JSON", f"the request body is not valid JSON: {exc}"
        ) from exc
    problems = validate_request(job_request)
    if problems:
        raise ProblemError(422, "Invalid job request", "; ".join(problems))
    secrets = _job_secrets(job_request)

    repo = job_request.repository
    event = JobSubmitted(
        job_id=new_id(),
        run_id=new_id(),
        repository=Repository(
            url=repo.url,
            branch=repo.branch,
            commit=repo.commit,
            depth=repo.depth,
            submodules=repo.submodules,
            lfs=repo.lfs,
        ),
        env=job_request.env,
        trigger=job_request.trigger,
        pool=job_request.pool,
        submitted_by=caller_id(request),
        priority=job_request.priority,
        concurrency_group=job_request.concurrency_group,
        cancel_in_progress=job_request.cancel_in_progress,
        labels=job_request.labels,
        secret_names=sorted(job_request.secrets),
        credentials_kind=_credentials_kind(secrets),
    )
    set_job_attributes(event.job_id, event.run_id)
    key = request.headers.get("Idempotency-Key")
    js = request.app[JS_KEY]
    vault = request.app[VAULT_KEY]
    if secrets.variables or secrets.credentials:
        await vault.put(event.job_id, secrets)
    digest = hashlib.sha256(body).hexdigest()
    seq = await append(
        js,
        event,
        msg_id=f"submit:{key}" if key else None,
        headers=inject_trace_context({REQUEST_DIGEST_HEADER: digest}),
    )
    if key:
        made_up = event.job_id
        event, original_digest = await _original_submission(js, seq, event)
        if event.job_id != made_up and (secrets.variables or secrets.credentials):
            await vault.purge(made_up)
        if original_digest not in (None, digest):
            raise ProblemError(
                422,
                "Idempotency-Key reused",
                f"Idempotency-Key {key!r} was already used for job {event.job_id} "
                "with a different request body; use a new key for a new job",
            )

    base = base_url(request)
    accepted = JobAccepted(
        job_id=event.job_id,
        run_id=event.run_id,
        status="submitted",
        seq=seq,
        links=job_links(base, event.job_id),
    )
    log.info(
        "job %s submitted for %s",
        event.job_id,
        repo.url,
        extra=job_fields(event.job_id, event.run_id),
    )
    if GATEWAY_METRICS_KEY in request.app:
        request.app[GATEWAY_METRICS_KEY].jobs_submitted.inc()
    return json_response(
        accepted, status=202, Location=accepted.links.self, **{"Stasis-Seq": str(seq)}
    )


def _job_secrets(job_request: JobRequest) -> JobSecrets:
    """Check the secret variables and credentials of a request and pack them."""
    clash = sorted(set(job_request.secrets) & set(job_request.env))
    if clash:
        raise ProblemError(
            422,
            "Invalid job request",
            f"{', '.join(clash)} given both in env and in secrets; keep each name "
            "in one of them",
        )
    credentials = None
    if job_request.credentials is not None:
        credentials = msgspec.to_builtins(job_request.credentials)
        try:
            msgspec.convert(credentials, Credentials)
        except msgspec.ValidationError as exc:
            raise ProblemError(422, "Invalid credentials", str(exc)) from exc
    return JobSecrets(variables=job_request.secrets, credentials=credentials)


def _credentials_kind(secrets: JobSecrets) -> str | None:
    if secrets.credentials is None:
        return None
    return msgspec.convert(secrets.credentials, Credentials).kind


async def _original_submission(
    js: JetStreamContext, seq: int, event: JobSubmitted
) -> tuple[JobSubmitted, str | None]:
    """Return the submission stored at `seq` and the digest of its request body.

    A repeated Idempotency-Key returns the first append's sequence, so the
    response carries the ids stored there, not the ones just made up.
    """
    stored = await js.get_msg(subjects.JOBS_STREAM, seq)
    original = decode_event(stored.data or b"")
    digest = (stored.headers or {}).get(REQUEST_DIGEST_HEADER)
    if not isinstance(original, JobSubmitted):
        return event, None
    return original, digest


async def job_or_404(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    projection = request.app[PROJECTION_KEY]
    min_seq = request.query.get("min_seq") or request.headers.get("Stasis-Min-Seq")
    if min_seq and is_number(min_seq):
        await projection.wait_for(int(min_seq))
    if projection.get(job_id) is None:
        hint = "" if is_valid_id(job_id) else " (job ids are 26 letters and digits)"
        raise ProblemError(404, "Job not found", f"no job {job_id!r}{hint}")
    return job_id


async def get_job(request: web.Request) -> web.Response:
    """Return one job from the projection."""
    job_id = await job_or_404(request)
    job = request.app[PROJECTION_KEY].get(job_id)
    assert job is not None
    return json_response(job_view(job, base_url(request)))


async def list_jobs(request: web.Request) -> web.Response:
    """Return recent jobs, newest first; `before` pages on with the last job id."""
    limit_text = request.query.get("limit", "50")
    if not is_number(limit_text) or not 1 <= int(limit_text) <= MAX_PAGE:
        raise ProblemError(
            400,
            "Invalid limit",
            f"limit {limit_text!r} must be a whole number from 1 to {MAX_PAGE}",
        )
    limit = int(limit_text)
    before = request.query.get("before")
    caller = caller_of(request)
    jobs = request.app[PROJECTION_KEY].recent(
        limit, before, lambda job: may_access(caller, job.submitted_by)
    )
    base = base_url(request)
    body: dict[str, object] = {"jobs": [job_view(job, base) for job in jobs]}
    if len(jobs) == limit:
        body["next"] = f"{base}/api/v1/jobs?limit={limit}&before={jobs[-1].job_id}"
    return json_response(body)


async def list_events(request: web.Request) -> web.Response:
    """Return the job's raw events from the stream, with sequence and time."""
    job_id = await job_or_404(request)
    stored = await read_job(request.app[JS_KEY], job_id)
    return json_response(
        {
            "job_id": job_id,
            "events": [
                {"seq": s.seq, "stored_at": s.stored_at, "event": s.event}
                for s in stored
            ],
        }
    )


LOG_FORMATS = ("text", "plain", "json", "raw")


async def get_logs(request: web.Request) -> web.Response:
    """Return a run's log as written (`text`), without control codes, as JSON or raw.

    `text` and `plain` are UTF-8 with U+FFFD for invalid bytes and with the
    continuation mark after each piece cut from a long line. `raw` is the output
    bytes exactly, as `application/octet-stream`. `run` picks a run (default:
    the last), `step` one step, and `since` returns only chunks after that
    logs-stream sequence (from a previous JSON response).
    """
    job_id = await job_or_404(request)
    job = request.app[PROJECTION_KEY].get(job_id)
    assert job is not None
    query = request.query
    run_id = query.get("run", job.last_run.run_id)
    if job.run(run_id) is None:
        raise ProblemError(404, "Run not found", f"job {job_id} has no run {run_id!r}")
    log_format = query.get("format", "text")
    since = query.get("since", "0")
    if log_format not in LOG_FORMATS or not is_number(since):
        raise ProblemError(
            400,
            "Invalid log query",
            f"format {log_format!r} must be one of {', '.join(LOG_FORMATS)} and "
            f"since {since!r} a logs-stream sequence (a whole number)",
        )
    step = query.get("step", "*")
    try:
        subject = (
            subjects.log_subject(job_id, run_id, step)
            if step != "*"
            else (subjects.job_logs_filter(job_id, run_id))
        )
    except ValueError as exc:
        raise ProblemError(400, "Invalid step", str(exc)) from exc

    messages = await read_subject(
        request.app[JS_KEY], subjects.LOGS_STREAM, subject, int(since) + 1
    )
    if log_format == "json":
        chunks = [
            {"seq": m.metadata.sequence.stream, "chunk": decode_chunk(m.data)}
            for m in messages
        ]
        return json_response({"job_id": job_id, "run_id": run_id, "chunks": chunks})
    if log_format == "raw":
        body = b"".join(chunk_bytes(decode_chunk(m.data)) for m in messages)
        return web.Response(body=body, content_type="application/octet-stream")
    text = "".join(decode_chunk(m.data).data for m in messages)
    if log_format == "plain":
        text = strip_control(text)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def stream_job(request: web.Request) -> web.StreamResponse:
    """Stream the job's events and log chunks as Server-Sent Events."""
    job_id = await job_or_404(request)
    last_id = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    stream = JobStream(
        request.app[JS_KEY],
        request.app[PROJECTION_KEY],
        job_id,
        parse_last_event_id(last_id),
    )
    heartbeat = float(request.app[CONFIG_KEY].server.sse_heartbeat)
    return await stream.serve(request, heartbeat)


async def cancel_job(request: web.Request) -> web.Response:
    """Append `run.cancel_requested` for the job's last run."""
    job_id = await job_or_404(request)
    job = request.app[PROJECTION_KEY].get(job_id)
    assert job is not None
    run = job.last_run
    if run.finished:
        raise ProblemError(
            409,
            "Run already finished",
            f"run {run.run_id} of job {job_id} already ended {run.status}; "
            "nothing to cancel",
        )
    seq = await append(
        request.app[JS_KEY], CancelRequested(job_id=job_id, run_id=run.run_id)
    )
    log.info("cancel requested for run %s of job %s", run.run_id, job_id)
    return json_response(
        {
            "job_id": job_id,
            "run_id": run.run_id,
            "status": "cancel_requested",
            "seq": seq,
        },
        status=202,
        **{"Stasis-Seq": str(seq)},
    )


async def retry_job(request: web.Request) -> web.Response:
    """Append `run.requested`: a new run of the same job, commit and pipeline."""
    job_id = await job_or_404(request)
    projection = request.app[PROJECTION_KEY]
    job = projection.get(job_id)
    assert job is not None
    last = job.last_run
    if last.status not in RETRYABLE:
        raise ProblemError(
            409,
            "Job cannot be retried",
            f"the last run {last.run_id} of job {job_id} is {last.status!r}; only a "
            f"run that ended {', '.join(sorted(RETRYABLE))} can be retried",
        )
    if job.secret_names or job.credentials_kind:
        raise ProblemError(
            409,
            "Job cannot be retried",
            f"job {job_id} used secrets or clone credentials, which are deleted when "
            "a run ends; submit it again (or replay it) with them",
        )
    event = RunRequested(job_id=job_id, run_id=new_id(), previous_run_id=last.run_id)
    try:
        seq = await append(
            request.app[JS_KEY], event, expected_last_seq=projection.job_seq[job_id]
        )
    except StreamConflict as exc:
        raise ProblemError(
            409,
            "Job changed",
            f"job {job_id} changed while the retry was requested; read it and retry",
        ) from exc
    log.info("retry of job %s requested as run %s", job_id, event.run_id)
    return json_response(
        {"job_id": job_id, "run_id": event.run_id, "status": "submitted", "seq": seq},
        status=202,
        **{"Stasis-Seq": str(seq)},
    )


async def health(request: web.Request) -> web.Response:
    """Report whether the gateway is connected and its projection is current."""
    projection = request.app[PROJECTION_KEY]
    nc = request.app[JS_KEY]._nc
    healthy = projection.ready.is_set() and nc.is_connected
    body = {
        "status": "ok" if healthy else "degraded",
        "nats_connected": nc.is_connected,
        "projection_seq": projection.seq,
        "jobs": len(projection.jobs),
    }
    return json_response(body, status=200 if healthy else 503)


async def pipeline_schema(request: web.Request) -> web.Response:
    """Serve the JSON Schema of `.stasis-ci.yaml`, for editors and validators."""
    return json_response(pipeline_json_schema())


async def events_schema(request: web.Request) -> web.Response:
    """Serve the JSON Schema of the events and log chunks on the streams."""
    return json_response(events_json_schema())


async def asyncapi_schema(request: web.Request) -> web.Response:
    """Serve the AsyncAPI 3.0 document of the NATS subjects and their messages."""
    return json_response(asyncapi_document())


def add_routes(app: web.Application) -> None:
    """Register every route of the API on `app`."""
    app.router.add_post("/api/v1/jobs", submit_job)
    app.router.add_get("/api/v1/jobs", list_jobs)
    app.router.add_get("/api/v1/jobs/{job_id}", get_job)
    app.router.add_delete("/api/v1/jobs/{job_id}", cancel_job)
    app.router.add_post("/api/v1/jobs/{job_id}/retry", retry_job)
    app.router.add_post("/api/v1/jobs/{job_id}/replay", replay_job)
    app.router.add_get("/api/v1/jobs/{job_id}/events", list_events)
    app.router.add_get("/api/v1/jobs/{job_id}/logs", get_logs)
    app.router.add_get("/api/v1/jobs/{job_id}/stream", stream_job)
    app.router.add_get("/health", health)
    app.router.add_get("/api/v1/schemas/pipeline.json", pipeline_schema)
    app.router.add_get("/api/v1/schemas/events.json", events_schema)
    app.router.add_get("/api/v1/schemas/asyncapi.json", asyncapi_schema)
