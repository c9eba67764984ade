"""Log line formats: text, JSON or key=value, with job, run and step ids.

A record gets its ids from `extra={"job_id": ...}` at the log call, or else
from `job_log_context`, which a job's span sets for every line logged inside
it. JSON and key=value lines print only the fields named in `ID_FIELDS` from
`extra`, never arbitrary attributes, so that a value passed for another reason
(a request, a credential) cannot end up in the log by accident.
"""

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from opentelemetry import trace

LogFormat = Literal["text", "json", "kv"]

ID_FIELDS = ("job_id", "run_id", "step", "attempt", "executor_id")
"""Record attributes that JSON and key=value lines print when set."""

_job_ids: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "stasis_job_ids", default=None
)


@contextlib.contextmanager
def job_log_context(
    job_id: str, run_id: str | None = None, step: str | None = None
) -> Iterator[None]:
    """Stamp every log line of the block, in this task, with these ids."""
    ids = dict(_job_ids.get() or {})
    ids["job_id"] = job_id
    if run_id is not None:
        ids["run_id"] = run_id
    if step is not None:
        ids["step"] = step
    token = _job_ids.set(ids)
    try:
        yield
    finally:
        _job_ids.reset(token)


def job_fields(
    job_id: str, run_id: str | None = None, step: str | None = None
) -> dict[str, str]:
    """Return `extra` for a log call about a job, run and step."""
    fields = {"job_id": job_id}
    if run_id is not None:
        fields["run_id"] = run_id
    if step is not None:
        fields["step"] = step
    return fields


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """Return the fields of one line: time, level, logger, message, ids, trace."""
    fields: dict[str, Any] = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(
            timespec="milliseconds"
        ),
        "level": record.levelname,
        "logger": record.name,
        "message": record.getMessage(),
    }
    context_ids = _job_ids.get() or {}
    for name in ID_FIELDS:
        value = getattr(record, name, None)
        if value is None:
            value = context_ids.get(name)
        if value is not None:
            fields[name] = value
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        fields["trace_id"] = format(span_context.trace_id, "032x")
        fields["span_id"] = format(span_context.span_id, "016x")
    return fields


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json.dumps(fields, ensure_ascii=False, default=str)


class KeyValueFormatter(logging.Formatter):
    """Formats each record as `key=value` pairs, quoting values with spaces."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return " ".join(f"{k}={_kv_value(v)}" for k, v in fields.items())


def _kv_value(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\\\n\t'):
        return text
    return json.dumps(text, ensure_ascii=False)


def formatter_for(log_format: LogFormat) -> logging.Formatter | None:
    """Return the formatter of `log_format`, or None to keep the text format."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "kv":
        return KeyValueFormatter()
    return None


def set_log_format(log_format: LogFormat) -> None:
    """Use `log_format` on every handler of the root logger."""
    formatter = formatter_for(log_format)
    if formatter is None:
        return
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
