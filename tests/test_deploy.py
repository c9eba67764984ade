"""The deployment files name real commands, settings and paths."""

import re
from pathlib import Path

import yaml

from libs.config import load_config
from services.cli.main import _parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ROOT = DEPLOY.parent


def _k8s_documents() -> list[dict]:
    return [
        doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / "stasis.yaml").read_text())
    ]


def _stasis_containers() -> list[dict]:
    containers = []
    for doc in _k8s_documents():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            if container["image"].startswith("stasis-ci"):
                containers.append(container)
    return containers


def test_k8s_commands_parse() -> None:
    containers = _stasis_containers()
    assert {c["args"][0] for c in containers} == {
        "gateway",
        "scheduler",
        "logsink",
        "executor",
    }
    for container in containers:
        args = _parser().parse_args(container["args"])
        assert args.command == container["args"][0]


def test_k8s_settings_are_known_keys() -> None:
    config_map = next(d for d in _k8s_documents() if d["kind"] == "ConfigMap")
    environ = dict(config_map["data"])
    for container in _stasis_containers():
        for variable in container.get("env", []):
            if "value" in variable:
                environ[variable["name"]] = variable["value"]
    environ["STASIS_SECRETS_KEY"] = "x"
    config = load_config(environ=environ)
    assert config.nats.url == "nats://nats:4222"
    assert config.server.host == "0.0.0.0"


def test_dockerfile_copies_existing_paths() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    sources = re.findall(r"^COPY (.+) \S+$", text, flags=re.MULTILINE)
    assert sources
    for line in sources:
        for source in line.split():
            assert (ROOT / source).exists(), source
