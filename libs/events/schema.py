"""JSON Schema of the job events and log chunks, generated from the msgspec types.

Clients that follow the streams with their own NATS library can validate what
they read against it. `python -m libs.events.schema` prints it.
"""

import json
from typing import Any

import msgspec

from .types import AnyEvent, DispatchOrder, LogChunk


def events_json_schema() -> dict[str, Any]:
    """Return one JSON Schema document covering every event, log chunk and order."""
    (event, chunk, order), components = msgspec.json.schema_components(
        [AnyEvent, LogChunk, DispatchOrder], ref_template="#/$defs/{name}"
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Stasis CI stream messages",
        "$defs": {
            **components,
            "AnyEvent": event,
            "LogChunkMessage": chunk,
            "DispatchOrderMessage": order,
        },
        "oneOf": [
            {"$ref": "#/$defs/AnyEvent"},
            {"$ref": "#/$defs/LogChunkMessage"},
            {"$ref": "#/$defs/DispatchOrderMessage"},
        ],
    }


if __name__ == "__main__":
    print(json.dumps(events_json_schema(), indent=2, sort_keys=True))
