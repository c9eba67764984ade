"""Tests that the shipped JSON Schema is current and matches what the loader accepts."""

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

import libs.pipeline
from libs.pipeline import pipeline_json_schema
from libs.pipeline.loader import (
    _PIPELINE_FIELDS,
    _RETRY_FIELDS,
    _STEP_FIELDS,
    _TRIGGER_FIELDS,
)
from libs.pipeline.schema import (
    PipelineSpec,
    RetrySpec,
    StepSpec,
    TriggersSpec,
    key_names,
)

SHIPPED = Path(libs.pipeline.__file__).with_name("pipeline.schema.json")
REPOSITORY = Path(libs.pipeline.__file__).parents[2]


def test_shipped_schema_is_current() -> None:
    shipped = json.loads(SHIPPED.read_text(encoding="utf-8"))

    # To update the shipped file:
    # python -m libs.pipeline > libs/pipeline/pipeline.schema.json
    assert shipped == pipeline_json_schema()


def test_schema_command_prints_shipped_file() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "libs.pipeline"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPOSITORY,
    )

    assert result.stdout == SHIPPED.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("spec", "table"),
    [
        (PipelineSpec, _PIPELINE_FIELDS),
        (StepSpec, _STEP_FIELDS),
        (RetrySpec, _RETRY_FIELDS),
        (TriggersSpec, _TRIGGER_FIELDS),
    ],
)
def test_loader_reads_every_schema_key(
    spec: type[msgspec.Struct], table: dict[str, object]
) -> None:
    assert sorted(key_names(spec)) == sorted(table)


def test_schema_describes_step_keys() -> None:
    step = pipeline_json_schema()["$defs"]["StepSpec"]

    assert step["required"] == ["scripts"]
    assert step["additionalProperties"] is False
    assert "if" in step["properties"]
    assert step["properties"]["when"]["enum"] == ["always", "on_failure", "on_success"]


def test_schema_allows_hidden_top_level_keys() -> None:
    pipeline = pipeline_json_schema()["$defs"]["PipelineSpec"]

    assert pipeline["patternProperties"] == {"^\\.": {}}
