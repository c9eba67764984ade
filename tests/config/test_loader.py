"""Loading the configuration: file, environment and their errors."""

from pathlib import Path

import pytest

from libs.config import ConfigError, load_config


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("server: {port: 9000}\nexecutor: {max_concurrent_jobs: 3}\n")
    config = load_config(path, environ={"STASIS_SERVER_PORT": "9100"})
    assert config.server.port == 9100
    assert config.executor.max_concurrent_jobs == 3


def test_durations_and_sizes_normalized() -> None:
    environ = {
        "STASIS_EXECUTOR_TIMEOUTS_JOB": "1h30m",
        "STASIS_EXECUTOR_RESOURCES_MEMORY": "2g",
    }
    config = load_config(environ=environ)
    assert config.executor.timeouts.job == 5400.0
    assert config.executor.resources.memory == 2 * 1024**3


def test_list_variables_split_on_commas() -> None:
    config = load_config(environ={"STASIS_AUTH_API_KEYS": " a-key , b-key,"})
    assert config.auth.api_keys == ["a-key", "b-key"]


def test_misspelt_variable_is_rejected() -> None:
    with pytest.raises(ConfigError, match="did you mean STASIS_EXECUTOR_NETWORK"):
        load_config(environ={"STASIS_EXECUTOR_NETWROK": "none"})


def test_client_variables_are_not_keys() -> None:
    config = load_config(
        environ={"STASIS_URL": "http://127.0.0.1:1", "STASIS_API_KEY": "k"}
    )
    assert config.server.port == 8080


def test_unknown_file_key_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("executor: {netwrok: none}\n")
    with pytest.raises(
        ConfigError, match=r"unknown field `netwrok` - at `\$\.executor`"
    ):
        load_config(path, environ={})


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"STASIS_SERVER_PORT": "99999"}, "invalid server.port 99999"),
        ({"STASIS_SERVER_PORT": "abc"}, "Expected `int`"),
        ({"STASIS_EXECUTOR_MAX_CONCURRENT_JOBS": "0"}, "must be at least 1"),
        ({"STASIS_EXECUTOR_TIMEOUTS_JOB": "soon"}, "invalid executor.timeouts.job"),
    ],
)
def test_invalid_values_name_the_key(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ=environ)
