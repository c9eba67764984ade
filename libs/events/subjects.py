"""NATS subject and stream names: the public addressing scheme of Stasis CI.

Subjects are part of the public interface: users subscribe to them with their
own clients, so a name here changes only with a new major version.
"""

import re

JOBS_STREAM = "STASIS_JOBS"
DISPATCH_STREAM = "STASIS_DISPATCH"
LOGS_STREAM = "STASIS_LOGS"

JOBS_PREFIX = "stasis.jobs"
DISPATCH_PREFIX = "stasis.dispatch"
LOGS_PREFIX = "stasis.logs"

ALL_JOBS = f"{JOBS_PREFIX}.*"
ALL_DISPATCH = f"{DISPATCH_PREFIX}.*"
ALL_LOGS = f"{LOGS_PREFIX}.*.*.*"

# A token may not contain '.', '*', '>' or white space in NATS; we allow less.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

SYSTEM_STEP = "_system"
"""Pseudo step name for executor output that belongs to no user step (clone, pull)."""


def check_token(value: str, what: str) -> str:
    """Return `value` if it is usable as one subject token, else raise ValueError."""
    if not _TOKEN.match(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1 to 128 letters, digits, '_' or '-'"
        )
    return value


def job_subject(job_id: str) -> str:
    """Return the subject that holds every event of one job."""
    return f"{JOBS_PREFIX}.{check_token(job_id, 'job id')}"


def dispatch_subject(pool: str) -> str:
    """Return the work-queue subject that executors of `pool` pull from."""
    return f"{DISPATCH_PREFIX}.{check_token(pool, 'pool')}"


def log_subject(job_id: str, run_id: str, step: str) -> str:
    """Return the subject of one step's log chunks in one run."""
    return f"{LOGS_PREFIX}.{job_id}.{run_id}.{check_token(step, 'step name')}"


def job_logs_filter(job_id: str, run_id: str = "*") -> str:
    """Return a filter subject matching every log chunk of a job or one run."""
    return f"{LOGS_PREFIX}.{job_id}.{run_id}.*"


def job_id_of(subject: str) -> str:
    """Return the job id carried by a job-event or log subject."""
    return subject.split(".", 3)[2]
