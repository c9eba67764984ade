"""Configuration of every Stasis process: one YAML file plus `STASIS_*` overrides."""

from .loader import ConfigError, env_overrides, load_config
from .model import (
    ArtifactsConfig,
    AuthConfig,
    Config,
    ExecutorConfig,
    ForwardEndpoint,
    LogsinkConfig,
    NatsConfig,
    ResourceLimits,
    SchedulerConfig,
    ServerConfig,
    Timeouts,
)

__all__ = [
    "ArtifactsConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "ExecutorConfig",
    "ForwardEndpoint",
    "LogsinkConfig",
    "NatsConfig",
    "ResourceLimits",
    "SchedulerConfig",
    "ServerConfig",
    "Timeouts",
    "env_overrides",
    "load_config",
]
