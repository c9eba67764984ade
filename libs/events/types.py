"""The event types of a job's stream, a tagged msgspec union.

Each event is one fact in the past tense. Events are a public, versioned
interface: a field is only ever added, with a default, never renamed or retyped,
so that every stream recorded by an earlier version still decodes.
"""

from datetime import UTC, datetime
from typing import Literal

import msgspec

SCHEMA_VERSION = 1

RunOutcome = Literal[
    "succeeded", "failed", "cancelled", "timed_out", "skipped", "expired"
]
StepOutcome = Literal["succeeded", "failed", "cancelled", "timed_out", "skipped"]
StepType = Literal["pre", "exec", "post"]


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


class Repository(msgspec.Struct, frozen=True, kw_only=True):
    """Where the source of a job comes from."""

    url: str
    branch: str | None = None
    commit: str | None = None
    depth: int | None = None
    """Shallow clone depth; None clones the whole history."""
    submodules: bool = False
    lfs: bool = False


class StepPlan(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a loaded pipeline, in the order it will run."""

    name: str
    type: StepType


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Fields shared by every event: which job and run it concerns, and when."""

    job_id: str
    run_id: str
    at: datetime = msgspec.field(default_factory=utc_now)
    prev_hash: str | None = None
    """SHA-256 (hex) of the job's previous stored message, set by `journal.append`.

    None on a job's first event, and on every event stored before the chain.
    """


class JobSubmitted(Event, frozen=True, kw_only=True, tag="job.submitted"):
    """A user submitted a job; `run_id` names its first run."""

    repository: Repository
    env: dict[str, str] = {}
    trigger: str = "manual"
    pool: str = "default"
    submitted_by: str | None = None
    priority: int = 0
    """Higher runs first; see the scheduling docs for the range."""
    concurrency_group: str | None = None
    """At most one run of a group runs at a time."""
    cancel_in_progress: bool = False
    """A newer run of the group cancels the running one."""
    labels: list[str] = []
    """Executor labels the job needs."""
    secret_names: list[str] = []
    """Names of the secret variables; the values are never in the stream."""
    credentials_kind: str | None = None
    """"token", "basic" or "ssh" when clone credentials were given; never values."""
    replay_of: str | None = None
    """The job this one replays, with the overrides below."""
    image: str | None = None
    """Image that replaces the pipeline's, from a replay."""
    only_steps: list[str] | None = None
    """Steps to run, from a replay; None runs all."""


class RunRequested(Event, frozen=True, kw_only=True, tag="run.requested"):
    """A user asked for another run of the job (a retry); `run_id` names it."""

    previous_run_id: str
    requested_by: str | None = None
    reason: str = ""


class JobQueued(Event, frozen=True, kw_only=True, tag="job.queued"):
    """The scheduler put a run in the queue of an executor pool."""

    pool: str = "default"
    reason: str = ""
    """Why the run waits; "" when the scheduler dispatches it at once."""
    position: int | None = None
    """Place in the pool's queue from 1 (next in line); None when not held."""


class RunHeld(Event, frozen=True, kw_only=True, tag="run.held"):
    """The scheduler still holds a queued run, with a new position or reason."""

    position: int | None = None
    """Place in the pool's queue from 1 (next in line)."""
    reason: str = ""


class RunDispatched(Event, frozen=True, kw_only=True, tag="run.dispatched"):
    """The scheduler sent the run's dispatch order to its pool's executors."""

    pool: str = "default"
    labels: list[str] = []
    """Labels an executor needs to take the order."""
    effective_priority: int = 0
    """The submitted priority plus what the run gained by waiting."""


class RunStarted(Event, frozen=True, kw_only=True, tag="run.started"):
    """An executor took the run and began attempt `attempt` of it."""

    executor_id: str
    attempt: int = 1


class AttemptLost(Event, frozen=True, kw_only=True, tag="run.attempt_lost"):
    """An executor stopped acking its order mid-run; that attempt is abandoned."""

    attempt: int
    executor_id: str
    reason: str = ""


class SourceCheckedOut(Event, frozen=True, kw_only=True, tag="source.checked_out"):
    """The executor cloned the repository and checked out `commit`."""

    commit: str
    branch: str | None = None


class PipelineLoaded(Event, frozen=True, kw_only=True, tag="pipeline.loaded"):
    """The executor read `.stasis-ci.yaml`; `steps` is the order they run in."""

    image: str
    steps: list[StepPlan]


class StepStarted(Event, frozen=True, kw_only=True, tag="step.started"):
    """A step's container started."""

    step: str
    attempt: int = 1


class StepFinished(Event, frozen=True, kw_only=True, tag="step.finished"):
    """A step ended; `exit_code` is None when it never ran to an exit."""

    step: str
    outcome: StepOutcome
    attempt: int = 1
    exit_code: int | None = None
    duration_s: float = 0.0
    reason: str = ""
    last_log_seq: int = 0
    """Stream sequence of the step's last log chunk (0: none), so a reader can
    show the whole log before the outcome."""


class ArtifactStored(Event, frozen=True, kw_only=True, tag="artifact.stored"):
    """An archive of files a step produced was stored."""

    step: str
    name: str
    key: str
    size: int
    sha256: str
    format: str
    storage_url: str
    content_type: str


class ArtifactWarning(Event, frozen=True, kw_only=True, tag="artifact.warning"):
    """Something in a step's artifact collection was skipped or matched nothing."""

    step: str
    message: str


class ArtifactRemoved(Event, frozen=True, kw_only=True, tag="artifact.removed"):
    """A stored artifact was deleted, for example by the retention setting."""

    name: str
    key: str
    reason: str = ""


class CancelRequested(Event, frozen=True, kw_only=True, tag="run.cancel_requested"):
    """A user asked to cancel the run."""

    requested_by: str | None = None
    reason: str = ""


class RunFinished(Event, frozen=True, kw_only=True, tag="run.finished"):
    """The run reached its final outcome; nothing of it runs any more."""

    outcome: RunOutcome
    reason: str = ""
    duration_s: float = 0.0
    last_log_seq: int = 0
    """Stream sequence of the run's last log chunk (0: none)."""


AnyEvent = (
    JobSubmitted
    | RunRequested
    | JobQueued
    | RunHeld
    | RunDispatched
    | RunStarted
    | AttemptLost
    | SourceCheckedOut
    | PipelineLoaded
    | StepStarted
    | StepFinished
    | ArtifactStored
    | ArtifactWarning
    | ArtifactRemoved
    | CancelRequested
    | RunFinished
)

EVENT_TYPES: tuple[type[Event], ...] = (
    JobSubmitted,
    RunRequested,
    JobQueued,
    RunHeld,
    RunDispatched,
    RunStarted,
    AttemptLost,
    SourceCheckedOut,
    PipelineLoaded,
    StepStarted,
    StepFinished,
    ArtifactStored,
    ArtifactWarning,
    ArtifactRemoved,
    CancelRequested,
    RunFinished,
)


class DispatchOrder(msgspec.Struct, frozen=True, kw_only=True):
    """The work-queue message that tells an executor to run one run of a job."""

    job_id: str
    run_id: str
    pool: str = "default"
    labels: list[str] = []
    """Labels the executor must have; one that lacks any gives the order back."""


class LogChunk(msgspec.Struct, frozen=True, kw_only=True):
    """A batch of output of one step, as captured by the executor.

    `seq` counts the chunks of one step attempt from 1, so a reader can tell a
    gap from a pause. `stream` is "stdout", "stderr" or "system" (executor notes).
    `data` is the output as text: invalid UTF-8 becomes U+FFFD, and a piece cut
    from a long line ends with the continuation mark "\u21a9\n".
    """

    job_id: str
    run_id: str
    step: str
    seq: int
    stream: Literal["stdout", "stderr", "system"]
    data: str
    attempt: int = 1
    at: datetime = msgspec.field(default_factory=utc_now)
    raw_b64: str | None = None
    """Base64 of the output bytes, set only when they differ from `data` in UTF-8.

    Invalid UTF-8 and continuation marks make them differ. None means the bytes
    are `data.encode("utf-8")`.
    """
    final: bool = False
    """True on the last chunk of a step attempt's log, which carries no output."""


def event_tag(event: Event) -> str:
    """Return the `type` tag that an event is encoded with."""
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(AnyEvent)
_chunk_decoder = msgspec.json.Decoder(LogChunk)
_dispatch_decoder = msgspec.json.Decoder(DispatchOrder)


def encode(value: msgspec.Struct) -> bytes:
    """Encode an event, log chunk or dispatch order as JSON."""
    return _encoder.encode(value)


def decode_event(data: bytes) -> AnyEvent:
    """Decode one job event; raise msgspec.ValidationError if it is not one."""
    return _event_decoder.decode(data)


def decode_chunk(data: bytes) -> LogChunk:
    """Decode one log chunk."""
    return _chunk_decoder.decode(data)


def decode_dispatch(data: bytes) -> DispatchOrder:
    """Decode one dispatch order."""
    return _dispatch_decoder.decode(data)
