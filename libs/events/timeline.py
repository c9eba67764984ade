"""The timeline of an audited job: what happened, who did it, and the verdict.

One line per stored event, then each run with the executor of each attempt,
each step's outcome and attempts and each artifact's checksum, then the
findings of the chain check.
"""

from .audit import AuditReport, StoredMessage, decode_message
from .types import (
    AnyEvent,
    ArtifactRemoved,
    ArtifactStored,
    ArtifactWarning,
    AttemptLost,
    CancelRequested,
    JobQueued,
    JobSubmitted,
    PipelineLoaded,
    RunDispatched,
    RunFinished,
    RunHeld,
    RunRequested,
    RunStarted,
    SourceCheckedOut,
    StepFinished,
    StepStarted,
    event_tag,
)


def render_timeline(report: AuditReport) -> str:
    """Return the report as text: one line per event, then runs and the verdict."""
    lines = [f"job {report.job_id}"]
    for message in report.messages:
        lines.append(describe_message(message))
    if report.state is not None:
        lines.append("")
        lines.extend(_summary(report))
    lines.append("")
    for rejected in report.rejected:
        lines.append(
            f"rejected by the fold: seq {rejected.seq} ({rejected.event_type}): "
            f"{rejected.reason}"
        )
    for finding in report.findings:
        lines.append(f"TAMPERED ({finding.kind}): {finding.message}")
    lines.append(_verdict_line(report))
    return "\n".join(lines) + "\n"


def describe_message(message: StoredMessage) -> str:
    """Return one timeline line: sequence, stored time, type and what happened."""
    when = (
        message.stored_at.isoformat(timespec="milliseconds")
        if message.stored_at
        else "?"
    )
    event = decode_message(message)
    if event is None:
        return f"{message.seq:>8}  {when}  undecodable: {message.data[:120]!r}"
    return f"{message.seq:>8}  {when}  {event_tag(event):<21} {describe(event)}"


def describe(event: AnyEvent) -> str:
    """Return what one event records, in a few words, with the ids that matter."""
    run = event.run_id
    match event:
        case JobSubmitted():
            where = event.repository.commit or event.repository.branch or "default"
            return (
                f"by key {event.submitted_by or '(none)'}: {event.repository.url} "
                f"at {where}, pool {event.pool}, run {run}"
            )
        case RunRequested():
            return (
                f"retry by key {event.requested_by or '(none)'}: run {run} after "
                f"{event.previous_run_id} {event.reason}"
            ).rstrip()
        case JobQueued() | RunHeld():
            place = "" if event.position is None else f" at position {event.position}"
            return f"run {run}{place} {event.reason}".rstrip()
        case RunDispatched():
            return f"run {run} to pool {event.pool}"
        case RunStarted():
            return f"run {run} attempt {event.attempt} on executor {event.executor_id}"
        case AttemptLost():
            return (
                f"run {run} attempt {event.attempt} on executor {event.executor_id} "
                f"lost: {event.reason}"
            )
        case SourceCheckedOut():
            return f"commit {event.commit}"
        case PipelineLoaded():
            names = ", ".join(step.name for step in event.steps)
            return f"image {event.image}, steps {names}"
        case StepStarted():
            return f"{event.step} attempt {event.attempt}"
        case StepFinished():
            code = "" if event.exit_code is None else f" exit {event.exit_code}"
            return (
                f"{event.step} attempt {event.attempt} {event.outcome}{code} in "
                f"{event.duration_s:.2f}s {event.reason}"
            ).rstrip()
        case ArtifactStored():
            return f"{event.name} sha256 {event.sha256}, {event.size} bytes"
        case ArtifactWarning():
            return f"{event.step}: {event.message}"
        case ArtifactRemoved():
            return f"{event.name} {event.reason}".rstrip()
        case CancelRequested():
            return f"by key {event.requested_by or '(none)'} {event.reason}".rstrip()
        case RunFinished():
            return f"run {run} {event.outcome} {event.reason}".rstrip()
    return ""


def _summary(report: AuditReport) -> list[str]:
    state = report.state
    assert state is not None
    attempts: dict[str, list[str]] = {}
    for message in report.messages:
        event = decode_message(message)
        if isinstance(event, RunStarted):
            attempts.setdefault(event.run_id, []).append(
                f"{event.attempt} on {event.executor_id}"
            )
    lines = [f"submitted by key {state.submitted_by or '(none)'}; {state.status}"]
    for run in state.runs:
        ran = "; ".join(attempts.get(run.run_id, [])) or "never started"
        lines.append(f"run {run.number} {run.run_id}: {run.status}, attempts {ran}")
        for step in run.steps:
            code = "" if step.exit_code is None else f", exit {step.exit_code}"
            lines.append(
                f"  step {step.name}: {step.status}{code}, attempts {step.attempt}"
            )
        for artifact in run.artifacts:
            lines.append(
                f"  artifact {artifact.name}: sha256 {artifact.sha256}, "
                f"{artifact.size} bytes"
            )
    return lines


def _verdict_line(report: AuditReport) -> str:
    count = len(report.messages)
    if report.verdict == "intact":
        return f"chain intact: {count} events, head sha256 {report.head_hash}"
    if report.verdict == "unchained":
        return f"chain absent: {count} events written before prev_hash existed"
    if report.verdict == "unreadable":
        return "no events stored for this job"
    return f"chain broken: {len(report.findings)} finding(s) in {count} events"
