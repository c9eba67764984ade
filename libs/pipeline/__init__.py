"""The `.stasis-ci.yaml` pipeline language: loading, validation and evaluation."""

from .errors import ExpressionError, PipelineError, PipelineIssue
from .expressions import Expression, compile_expression
from .globs import glob_match
from .loader import load_pipeline
from .model import PREDEFINED_VARIABLES, Pipeline, Retry, Step, Triggers
from .schema import pipeline_json_schema

__all__ = [
    "PREDEFINED_VARIABLES",
    "Expression",
    "ExpressionError",
    "Pipeline",
    "PipelineError",
    "PipelineIssue",
    "Retry",
    "Step",
    "Triggers",
    "compile_expression",
    "glob_match",
    "load_pipeline",
    "pipeline_json_schema",
]
