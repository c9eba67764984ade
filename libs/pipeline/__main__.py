"""Print the JSON Schema of `.stasis-ci.yaml`, to regenerate the shipped copy.

python -m libs.pipeline > libs/pipeline/pipeline.schema.json
"""

import sys

from .schema import pipeline_json_schema_text

sys.stdout.write(pipeline_json_schema_text())
