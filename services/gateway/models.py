"""Request and response bodies of the HTTP API, as msgspec types."""

import re
from datetime import UTC, datetime
from typing import Literal

import msgspec

from libs.events import JobState
from libs.events.fold import RunState
from services.scheduler.rules import priority_problem

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REF = re.compile(r"^[A-Za-z0-9._/@+-]{1,255}$")
_URL = re.compile(r"^(https?|file|ssh|git)://\S+$|^/\S*$|^[\w.-]+@[\w.-]+:\S+$")


class RepositoryRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The repository to build, and its branch or commit."""

    url: str
    branch: str | None = None
    commit: str | None = None
    depth: int | None = None
    """Shallow clone depth (1 to 100000); unset clones the whole history."""
    submodules: bool = False
    lfs: bool = False


class CredentialsRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Clone credentials: a token, a username and password, or an SSH key."""

    token: str | None = None
    username: str | None = None
    password: str | None = None
    ssh_private_key: str | None = None
    known_hosts: str | None = None
    strict_host_key_checking: bool = True


class JobRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of `POST /api/v1/jobs`."""

    repository: RepositoryRequest
    env: dict[str, str] = {}
    trigger: Literal["manual", "push", "tag", "api"] = "manual"
    pool: str = "default"
    priority: int = 0
    concurrency_group: str | None = None
    cancel_in_progress: bool = False
    labels: list[str] = []
    secrets: dict[str, str] = {}
    """Secret variables: given to the steps, masked in logs, never stored in plain."""
    credentials: CredentialsRequest | None = None


class JobLinks(msgspec.Struct, kw_only=True):
    """URLs of a job's resources."""

    self: str
    events: str
    logs: str
    stream: str


class JobAccepted(msgspec.Struct, kw_only=True):
    """The body of a 202 response to a submission."""

    job_id: str
    run_id: str
    status: str
    seq: int
    links: JobLinks


class JobView(msgspec.Struct, kw_only=True):
    """A job as the API shows it: its submission, status and runs."""

    job_id: str
    status: str
    repository: dict[str, str | None]
    env: dict[str, str]
    trigger: str
    pool: str
    submitted_at: str
    submitted_by: str | None = None
    priority: int = 0
    concurrency_group: str | None = None
    labels: list[str] = []
    secret_names: list[str] = []
    credentials_kind: str | None = None
    replay_of: str | None = None
    waited_s: float | None = None
    """Seconds the last run waited in the queue, so far or until it was dispatched."""
    runs: list[RunState]
    links: JobLinks


def validate_request(request: JobRequest) -> list[str]:
    """Return what is wrong with a submission, one sentence per problem."""
    problems = []
    repo = request.repository
    if not _URL.match(repo.url):
        problems.append(
            f"repository.url {repo.url!r} is not a git URL or absolute path; use "
            "https://host/repo.git, ssh://host/repo.git, git@host:repo.git, "
            "file:///path or /path"
        )
    for name, value in (("branch", repo.branch), ("commit", repo.commit)):
        if value is not None and (not _REF.match(value) or ".." in value):
            problems.append(
                f"repository.{name} {value!r} is not a valid git ref; use letters, "
                "digits and ._/@+- without '..'"
            )
    for name in [*request.env, *request.secrets]:
        if not _ENV_NAME.match(name):
            problems.append(
                f"env name {name!r} is invalid; use letters, digits and '_', "
                "not starting with a digit"
            )
    priority = priority_problem(request.priority)
    if priority is not None:
        problems.append(priority)
    if repo.depth is not None and not 1 <= repo.depth <= 100_000:
        problems.append(
            f"repository.depth {repo.depth!r} is out of range; use 1 to 100000, "
            "or leave it out to clone the whole history"
        )
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", request.pool):
        problems.append(
            f"pool {request.pool!r} is invalid; use 1 to 64 letters, digits, '_' or '-'"
        )
    return problems


def job_links(base: str, job_id: str) -> JobLinks:
    """Return the links of one job under the API base URL."""
    root = f"{base}/api/v1/jobs/{job_id}"
    return JobLinks(
        self=root, events=f"{root}/events", logs=f"{root}/logs", stream=f"{root}/stream"
    )


def job_view(job: JobState, base: str) -> JobView:
    """Return the API view of a job's folded state."""
    repo = job.repository
    return JobView(
        job_id=job.job_id,
        status=job.status,
        repository={"url": repo.url, "branch": repo.branch, "commit": repo.commit},
        env=job.env,
        trigger=job.trigger,
        pool=job.pool,
        submitted_at=job.submitted_at.isoformat(),
        submitted_by=job.submitted_by,
        priority=job.priority,
        concurrency_group=job.concurrency_group,
        labels=list(job.labels),
        secret_names=list(job.secret_names),
        credentials_kind=job.credentials_kind,
        replay_of=job.replay_of,
        waited_s=_waited(job.last_run),
        runs=list(job.runs),
        links=job_links(base, job.job_id),
    )


def _waited(run: RunState) -> float | None:
    if run.queued_at is None:
        return None
    end = run.dispatched_at or run.started_at or datetime.now(UTC)
    return round(max(0.0, (end - run.queued_at).total_seconds()), 3)
