"""Loading and validating the configuration file and its environment overrides."""

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from libs.units import parse_duration, parse_size

from .model import Config

ENV_PREFIX = "STASIS_"
_DURATIONS = (
    "nats.jobs_max_age",
    "nats.logs_max_age",
    "nats.duplicate_window",
    "nats.ack_wait",
    "nats.connect_timeout",
    "server.sse_heartbeat",
    "executor.timeouts.job",
    "executor.timeouts.step",
    "executor.timeouts.clone",
    "executor.timeouts.kill_grace",
    "artifacts.retention",
    "artifacts.retention_interval",
    "secrets.ttl",
    "executor.heartbeat_interval",
    "executor.drain_timeout",
    "scheduler.max_queue_time",
    "scheduler.ageing_interval",
    "scheduler.executor_ttl",
)
_SIZES = (
    "nats.logs_max_bytes",
    "executor.resources.memory",
    "artifacts.max_bytes_per_job",
    "executor.max_log_bytes",
    "executor.log_tail_bytes",
    "artifacts.multipart_threshold",
    "artifacts.part_size",
)


# Lists of mappings have no sensible one-line form; they are set in the file.
_FILE_ONLY = frozenset({"logsink.forward"})

CLIENT_VARIABLES = frozenset({"STASIS_URL", "STASIS_API_KEY", "STASIS_TEST_IMAGE"})
"""`STASIS_*` variables that the CLI and tests read, not configuration keys."""


class ConfigError(Exception):
    """Raised for a configuration that cannot be read or is invalid."""


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read `path` (optional), apply `STASIS_*` variables, then `overrides`.

    `overrides` maps dotted keys such as "server.port" to values, for the CLI and
    tests. Durations and sizes come back normalized to seconds and bytes.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        tree = _read_file(Path(path))
    for key, value in env_overrides(os.environ if environ is None else environ):
        _set_path(tree, key, value)
    for key, value in (overrides or {}).items():
        _set_path(tree, key, value)

    source = str(path) if path else "the defaults and environment"
    try:
        config = msgspec.convert(tree, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration in {source}: {exc}") from exc
    _normalize(config, source)
    return config


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, Any]]:
    """Return (dotted key, value) for each `STASIS_*` variable naming a known key.

    `STASIS_EXECUTOR_MAX_CONCURRENT_JOBS` sets `executor.max_concurrent_jobs`;
    list values such as `auth.api_keys` are comma-separated. A `STASIS_*`
    variable that names no key raises ConfigError, so a typo in a setting
    such as `STASIS_EXECUTOR_NETWORK` cannot pass silently.
    """
    leaves = {key: kind for key, kind in _leaf_keys_with_types(Config)}
    known = {
        ENV_PREFIX + key.replace(".", "_").upper(): key
        for key in leaves
        if key not in _FILE_ONLY
    }
    found: list[tuple[str, Any]] = []
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in CLIENT_VARIABLES:
            continue
        key = known.get(name)
        if key is None:
            raise ConfigError(_unknown_variable(name, known))
        if _is_list(leaves[key]):
            found.append((key, [v.strip() for v in value.split(",") if v.strip()]))
        else:
            found.append((key, value))
    return found


def _unknown_variable(name: str, known: Mapping[str, str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return (
        f"unknown environment variable {name}: no configuration key has that "
        f"name{hint} Remove it, or see docs/configuration.md for the names"
    )


def _is_list(annotation: object) -> bool:
    return getattr(annotation, "__origin__", None) is list


def _leaf_keys_with_types(
    struct_type: type, prefix: str = ""
) -> list[tuple[str, object]]:
    leaves: list[tuple[str, object]] = []
    for field in msgspec.structs.fields(struct_type):
        name = prefix + field.name
        if isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            leaves.extend(_leaf_keys_with_types(field.type, name + "."))
        else:
            leaves.append((name, field.type))
    return leaves


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read configuration file {str(path)!r}: {exc}"
        ) from exc
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"invalid YAML in configuration file {str(path)!r}: {exc}"
        ) from exc
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(
            f"configuration file {str(path)!r} must hold a mapping at the top, "
            f"not a {type(tree).__name__}"
        )
    return tree


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"configuration key {part!r} must be a mapping")
        node = child
    node[leaf] = value


def _normalize(config: Config, source: str) -> None:
    for key in _DURATIONS + _SIZES:
        *parents, leaf = key.split(".")
        node: Any = config
        for part in parents:
            node = getattr(node, part)
        raw = getattr(node, leaf)
        if raw is None:
            continue
        try:
            value = parse_duration(raw) if key in _DURATIONS else parse_size(raw)
        except ValueError as exc:
            if key == "nats.logs_max_bytes" and raw == -1:
                continue
            raise ConfigError(f"invalid {key} in {source}: {exc}") from exc
        setattr(node, leaf, value)
    if not 0 <= config.server.port <= 65535:
        raise ConfigError(
            f"invalid server.port {config.server.port!r} in {source}: use 1 to 65535, "
            "or 0 for a free port"
        )
    if config.executor.max_concurrent_jobs < 1:
        raise ConfigError(
            f"invalid executor.max_concurrent_jobs "
            f"{config.executor.max_concurrent_jobs!r} in {source}: must be at least 1"
        )
