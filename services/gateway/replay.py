"""`POST /api/v1/jobs/{job_id}/replay`: a new job copied from an old one.

The new job repeats the old one's repository, pool, trigger, env and
scheduling fields, with `replay_of` naming the old job. It builds the commit
the old job's last run checked out, unless the request overrides the commit
or the branch. A branch override without a commit builds the branch head.
Env overrides are merged over the old env. Secrets and clone credentials are
not copied.
"""

import logging
import re

import msgspec
from aiohttp import web

from libs.events import JobState, JobSubmitted, Repository, new_id, subjects
from libs.events.journal import append

# api.py imports this module for its routes, so names are looked up in it late.
from . import api
from .models import (
    JobAccepted,
    JobRequest,
    RepositoryRequest,
    job_links,
    validate_request,
)
from .problems import ProblemError

log = logging.getLogger(__name__)

_IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")


class ReplayRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of a replay; every field is optional and overrides the old job."""

    commit: str | None = None
    branch: str | None = None
    env: dict[str, str] = {}
    """Merged over the old job's env."""
    image: str | None = None
    """Replaces the pipeline's `image` in every step."""
    steps: list[str] | None = None
    """Names of the steps to run; the others are skipped."""


_decoder = msgspec.json.Decoder(ReplayRequest)


async def replay_job(request: web.Request) -> web.Response:
    """Append `job.submitted` for a copy of the job and answer 202 with its ids."""
    job_id = await api.job_or_404(request)
    job = request.app[api.PROJECTION_KEY].get(job_id)
    assert job is not None
    body = await request.read()
    try:
        replay = _decoder.decode(body) if body.strip() else ReplayRequest()
    except msgspec.ValidationError as exc:
        raise ProblemError(422, "Invalid replay request", str(exc)) from exc
    except msgspec.DecodeError as exc:
        raise ProblemError(
            400, "Malformed JSON", f"the request body is not valid JSON: {exc}"
        ) from exc

    event = replayed_submission(job, replay)
    problems = _problems(event, replay)
    if problems:
        raise ProblemError(422, "Invalid replay request", "; ".join(problems))
    seq = await append(request.app[api.JS_KEY], event)

    accepted = JobAccepted(
        job_id=event.job_id,
        run_id=event.run_id,
        status="submitted",
        seq=seq,
        links=job_links(api.base_url(request), event.job_id),
    )
    log.info("job %s submitted as a replay of job %s", event.job_id, job_id)
    return api.json_response(
        accepted, status=202, Location=accepted.links.self, **{"Stasis-Seq": str(seq)}
    )


def replayed_submission(job: JobState, replay: ReplayRequest) -> JobSubmitted:
    """Return the `job.submitted` event of a replay of `job` with the overrides."""
    old = job.repository
    commit = replay.commit
    if commit is None and replay.branch is None:
        commit = job.last_run.commit or old.commit
    steps = replay.steps if replay.steps is not None else job.only_steps
    return JobSubmitted(
        job_id=new_id(),
        run_id=new_id(),
        repository=Repository(
            url=old.url,
            branch=replay.branch if replay.branch is not None else old.branch,
            commit=commit,
            depth=old.depth,
            submodules=old.submodules,
            lfs=old.lfs,
        ),
        env={**job.env, **replay.env},
        trigger=job.trigger,
        pool=job.pool,
        priority=job.priority,
        concurrency_group=job.concurrency_group,
        cancel_in_progress=job.cancel_in_progress,
        labels=list(job.labels),
        replay_of=job.job_id,
        image=replay.image if replay.image is not None else job.image,
        only_steps=None if steps is None else list(steps),
    )


def _problems(event: JobSubmitted, replay: ReplayRequest) -> list[str]:
    repo = event.repository
    # The gateway's own submission checks cover the URL, refs, env and pool.
    as_request = JobRequest(
        repository=RepositoryRequest(
            url=repo.url, branch=repo.branch, commit=repo.commit, depth=repo.depth
        ),
        env=event.env,
        pool=event.pool,
    )
    problems = validate_request(as_request)
    if replay.image is not None and not _IMAGE.match(replay.image):
        problems.append(
            f"image {replay.image!r} is not a Docker image reference; use a name "
            "such as debian:bookworm or registry.example/team/app@sha256:<digest>"
        )
    if replay.steps is not None and not replay.steps:
        problems.append("steps is empty; leave it out to run every step")
    for step in replay.steps or []:
        try:
            subjects.check_token(step, "step name")
        except ValueError as exc:
            problems.append(str(exc))
    return problems
