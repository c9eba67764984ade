"""The typed configuration tree; every key has a default that works on one host."""

import os
import socket
from typing import Annotated, Literal

import msgspec


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(base, "stasis")


def _default_executor_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class NatsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The NATS server to use and the settings of the JetStream streams."""

    url: str | None = None
    """Server URL(s), comma-separated; unset starts an embedded nats-server."""
    embedded_port: int = 0
    """Port of the embedded server on 127.0.0.1; 0 picks a free one."""
    replicas: int = 1
    """Stream replicas; 3 in a three-node cluster."""
    jobs_max_age: float | str = "30d"
    """How long job events are kept."""
    logs_max_age: float | str = "7d"
    """How long log chunks stay in NATS; the logsink's files stay."""
    logs_max_bytes: int | str = -1
    """Size cap of the logs stream; -1 means no cap."""
    duplicate_window: float | str = "2m"
    """How long a repeated Idempotency-Key or message id is recognised."""
    ack_wait: float | str = "30s"
    """How long a dispatch message stays with an executor between progress acks."""
    connect_timeout: float | str = "5s"
    """Time the first connection attempt may take."""


class ServerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The gateway's HTTP listener."""

    host: str = "127.0.0.1"
    """Address the gateway listens on."""
    port: int = 8080
    """Gateway port; 0 picks a free one."""
    public_url: str | None = None
    """Base URL put in links of responses; defaults to http://host:port."""
    sse_heartbeat: float | str = "15s"
    """Interval of SSE comment lines that keep proxies from closing idle streams."""


class ResourceLimits(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Limits applied to every job container."""

    cpus: float = 1.0
    """CPUs per step container."""
    memory: int | str = "1g"
    """Memory limit per step container."""
    pids: int = 512
    """Process limit per step container."""


class Timeouts(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Executor time limits, in seconds or durations such as "10m"."""

    job: float | str = "1h"
    """Default and maximum time of a whole run."""
    step: float | str = "1h"
    """Maximum time of one step; a pipeline's own `timeout` is capped by it."""
    clone: float | str = "5m"
    """Maximum time of the clone."""
    kill_grace: float | str = "10s"
    """Time between SIGTERM and SIGKILL when a step is stopped."""


class ExecutorConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One executor process."""

    id: str = msgspec.field(default_factory=_default_executor_id)
    """Name recorded in run.started and in heartbeats."""
    pool: str = "default"
    """Dispatch subject the executor pulls orders from."""
    max_concurrent_jobs: int = 2
    """Slots: runs this executor runs at the same time."""
    workspace_root: str | None = None
    """Host directory for clones before upload; defaults to <data_dir>/workspaces."""
    network: str = "bridge"
    """Docker network mode of job containers; "none" disables networking."""
    pull_images: bool = True
    """Pull a missing image; off, a missing image fails the run."""
    max_log_bytes: int | str = "64m"
    """Log bytes one run may send; past it a notice, then only the last
    `log_tail_bytes` of each step are kept."""
    log_tail_bytes: int | str = "64k"
    """Last bytes of each step kept after the log limit is reached."""
    labels: list[str] = []
    """Labels this executor offers, such as docker or arm64; jobs may ask for them."""
    heartbeat_interval: float | str = "2s"
    """How often the executor publishes its free slots for the scheduler."""
    drain_timeout: float | str = "30s"
    """On SIGTERM, how long running jobs may go on before their orders are handed
    back to other executors."""
    max_run_attempts: int = 3
    """Attempts of a run whose executor was lost before the run fails; step
    `retry` in the pipeline is counted apart from this."""
    resources: ResourceLimits = msgspec.field(default_factory=ResourceLimits)
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    docker_url: str | None = None
    """Docker API URL; unset uses DOCKER_HOST or the local socket."""


class SchedulerConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Limits and timings of the scheduler; unset limits do not apply."""

    max_running: int | None = None
    """Runs dispatched or running at once, over every pool."""
    max_running_per_repository: int | None = None
    """Runs of one repository dispatched or running at once."""
    max_running_per_key: int | None = None
    """Per API key; submissions without a key share one limit."""
    max_queue_time: float | str = "1h"
    """Time a run may wait undispatched before it ends expired."""
    ageing_interval: float | str = "60s"
    """Waiting time that raises a run's effective priority by one."""
    executor_ttl: float | str = "10s"
    """Time without a heartbeat after which an executor counts as gone."""


class ArtifactsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The artifact store and its limits."""

    storage_type: str = "local"
    """"local" (files under `path`) or "s3"."""
    path: str | None = None
    """Root of the local store; defaults to <data_dir>/artifacts."""
    format: str = "tar.gz"
    """Archive format of collected artifacts: "tar.gz" or "zip"."""
    max_bytes_per_job: int | str = "1g"
    """Largest total size of the files one step may collect."""
    bucket: str | None = None
    """S3 bucket of the s3 store."""
    prefix: str = ""
    """Key prefix inside the bucket."""
    region: str | None = None
    """S3 region; unset uses the AWS environment."""
    endpoint_url: str | None = None
    """S3-compatible endpoint; unset uses AWS."""
    access_key_id: str | None = None
    """Unset uses the standard AWS environment and credential chain."""
    secret_access_key: str | None = None
    """Secret key that goes with access_key_id."""
    multipart_threshold: int | str = "8m"
    """Files above this size are uploaded to S3 in parts."""
    part_size: int | str = "8m"
    """Size of each part of a multipart upload."""
    retention: float | str | None = None
    """Age after which the gateway deletes an artifact and records that it did;
    unset keeps artifacts for as long as the store does."""
    retention_interval: float | str = "10m"
    """How often the gateway looks for artifacts past `retention`."""


class ForwardEndpoint(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An external HTTP endpoint that receives every log chunk in batches."""

    url: str
    headers: dict[str, str] = {}
    """Extra request headers, e.g. an Authorization header for the endpoint."""
    batch_max_chunks: int = 500
    batch_max_bytes: int = 256 * 1024
    flush_interval: float = 1.0
    """Seconds a partial batch waits before it is sent."""
    rate_limit_per_second: float = 10.0
    """Maximum requests per second to this endpoint."""
    max_attempts: int = 8
    """Tries per batch before it goes to the dead-letter file."""
    retry_base: float = 0.5
    retry_max: float = 30.0
    timeout: float = 10.0


class LogsinkConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The logsink's destinations besides its own files."""

    forward: list[ForwardEndpoint] = []
    """HTTP endpoints that receive log chunks in batches; see docs/logs.md."""


class AuthConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """API keys, job ownership and request limits of the gateway.

    With `enabled` false (the default) the gateway checks no key and applies
    none of the limits here except `max_body_bytes`, so keep `server.host` on
    loopback or behind an authenticating proxy.
    """

    enabled: bool = False
    """Require an API key on every path but the public ones."""
    api_keys: list[str] = []
    """Keys in plain text or as `sha256:<hex>`; each can read only its own jobs."""
    admin_keys: list[str] = []
    """Keys, in the same forms, that see and act on every job."""
    api_key_file: str | None = None
    """File of keys, one a line; `admin:` marks an admin key, `#` a comment."""
    public_paths: list[str] = msgspec.field(
        default_factory=lambda: ["/health", "/metrics", "/api-docs"]
    )
    """Paths open without a key; each also opens every path below it."""
    rate_limit_per_minute: int = 600
    """Requests each key may make per minute on average; 0 turns the limit off."""
    burst: int = 60
    """Requests a key may make at once before `rate_limit_per_minute` applies."""
    max_sse_per_key: int = 10
    """Open SSE streams per key; 0 turns the limit off."""
    max_body_bytes: int | str = "1m"
    """Largest request body the gateway reads; artifact uploads stream and are
    bounded by `artifacts.max_bytes_per_job` instead."""


class SecretsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The storage of secret variables and clone credentials between submit and run."""

    key: str | None = None
    """Fernet key (URL-safe base64 of 32 bytes) shared by gateways and executors."""
    key_file: str | None = None
    """File with the key; defaults to <data_dir>/secrets.key, created if absent."""
    ttl: float | str = "24h"
    """Life of an entry no run collected; a run's end removes its job's entry."""


class TelemetryConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Metrics, traces and the log line format of one process."""

    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    """Port of `/metrics` for a scheduler, executor or logsink run alone; unset
    serves none. The gateway always serves `/metrics` on its HTTP port."""
    metrics_host: str = "127.0.0.1"
    """Address of that `/metrics` listener."""
    otlp_endpoint: str | None = None
    """Base URL of an OTLP/HTTP collector, e.g. http://127.0.0.1:4318; unset
    exports no span."""
    service_name: str = "stasis"
    """`service.name` of the exported spans."""
    log_format: Literal["text", "json", "kv"] = "text"
    """Log lines as text, JSON or key=value, with job, run and step ids."""


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The whole configuration of a Stasis deployment."""

    data_dir: str = msgspec.field(default_factory=_default_data_dir)
    """Embedded NATS store, logs, artifacts and clones live below it."""
    log_level: str = "INFO"
    """DEBUG also logs every HTTP request and message."""
    nats: NatsConfig = msgspec.field(default_factory=NatsConfig)
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    executor: ExecutorConfig = msgspec.field(default_factory=ExecutorConfig)
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    artifacts: ArtifactsConfig = msgspec.field(default_factory=ArtifactsConfig)
    logsink: LogsinkConfig = msgspec.field(default_factory=LogsinkConfig)
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    secrets: SecretsConfig = msgspec.field(default_factory=SecretsConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)

    @property
    def workspace_root(self) -> str:
        """The executor's clone directory, resolved against the data directory."""
        return self.executor.workspace_root or os.path.join(self.data_dir, "workspaces")

    @property
    def artifacts_dir(self) -> str:
        """Root of the local artifact store."""
        return self.artifacts.path or os.path.join(self.data_dir, "artifacts")

    @property
    def secrets_key_file(self) -> str:
        """The file that contains the secrets key when `secrets.key` is unset."""
        return self.secrets.key_file or os.path.join(self.data_dir, "secrets.key")

    @property
    def logs_dir(self) -> str:
        """Where the logsink writes persisted logs."""
        return os.path.join(self.data_dir, "logs")
