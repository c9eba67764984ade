"""AsyncAPI 3.0 document of the NATS subjects, built from the msgspec types.

The payload schemas are those of `events_json_schema`, moved under
`components/schemas`, so the document cannot drift from the event types.
The gateway serves it at `/api/v1/schemas/asyncapi.json`, and
`python -m libs.events.asyncapi` prints it.
"""

import json
from typing import Any

from .schema import events_json_schema
from .types import EVENT_TYPES, SCHEMA_VERSION
from .types import Event as EventBase

ASYNCAPI_VERSION = "3.0.0"
_SCHEMAS = "#/components/schemas/"

_PARAMETERS = {
    "job_id": "The job: a 26-character ULID in lower-case Crockford base32.",
    "run_id": "The run of the job, an id of the same form.",
    "step": "The step name from the pipeline; `_system` holds executor output.",
    "pool": "The executor pool that the order is for.",
}


def asyncapi_document() -> dict[str, Any]:
    """Return the AsyncAPI 3.0 document of every Stasis CI subject."""
    schema = events_json_schema()
    schemas = _rewrite_refs(schema["$defs"])
    _use_asyncapi_discriminator(schemas)
    event_messages = {
        event_type.__name__: _event_message(event_type) for event_type in EVENT_TYPES
    }
    messages = {
        **event_messages,
        "LogChunk": {
            "name": "log_chunk",
            "title": "Log chunk",
            "summary": "A batch of output of one step attempt.",
            "contentType": "application/json",
            "payload": {"$ref": _SCHEMAS + "LogChunkMessage"},
        },
        "DispatchOrder": {
            "name": "dispatch_order",
            "title": "Dispatch order",
            "summary": "Tells an executor of the pool to run one run of a job.",
            "contentType": "application/json",
            "payload": {"$ref": _SCHEMAS + "DispatchOrderMessage"},
        },
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Stasis CI streams",
            "version": str(SCHEMA_VERSION),
            "description": (
                "Subjects and messages of the NATS JetStream streams of Stasis CI. "
                "Fields are only ever added, with defaults; see docs/events.md."
            ),
        },
        "defaultContentType": "application/json",
        "channels": _channels(event_messages),
        "operations": _operations(event_messages),
        "components": {"messages": messages, "schemas": schemas},
    }


def _event_message(event_type: type[EventBase]) -> dict[str, Any]:
    tag = event_type.__struct_config__.tag
    doc = (event_type.__doc__ or "").strip()
    return {
        "name": tag,
        "title": event_type.__name__,
        "summary": doc.splitlines()[0] if doc else tag,
        "contentType": "application/json",
        "headers": {
            "type": "object",
            "properties": {
                "Stasis-Event-Type": {"type": "string", "const": tag},
                "Nats-Msg-Id": {"type": "string"},
            },
        },
        "payload": {"$ref": _SCHEMAS + event_type.__name__},
    }


def _parameters(*names: str) -> dict[str, Any]:
    return {name: {"description": _PARAMETERS[name]} for name in names}


def _message_refs(names: list[str]) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/messages/{name}"} for name in names}


def _channels(event_messages: dict[str, Any]) -> dict[str, Any]:
    return {
        "jobEvents": {
            "address": "stasis.jobs.{job_id}",
            "title": "Events of one job",
            "description": (
                "Stream STASIS_JOBS. Every event of one job in order; each "
                "carries prev_hash, the SHA-256 of the job's previous message."
            ),
            "parameters": _parameters("job_id"),
            "messages": _message_refs(list(event_messages)),
        },
        "logChunks": {
            "address": "stasis.logs.{job_id}.{run_id}.{step}",
            "title": "Log of one step",
            "description": "Stream STASIS_LOGS. Log chunks of one step of one run.",
            "parameters": _parameters("job_id", "run_id", "step"),
            "messages": _message_refs(["LogChunk"]),
        },
        "dispatch": {
            "address": "stasis.dispatch.{pool}",
            "title": "Dispatch orders of one pool",
            "description": (
                "Stream STASIS_DISPATCH, a work queue. Internal: do not consume, "
                "because a consumed order is taken from the executors."
            ),
            "parameters": _parameters("pool"),
            "messages": _message_refs(["DispatchOrder"]),
        },
    }


def _operations(event_messages: dict[str, Any]) -> dict[str, Any]:
    def refs(channel: str, names: list[str]) -> list[dict[str, str]]:
        return [{"$ref": f"#/channels/{channel}/messages/{name}"} for name in names]

    return {
        "publishJobEvents": {
            "action": "send",
            "title": "Append a job event",
            "summary": "Gateway, scheduler and executors append a job's events.",
            "channel": {"$ref": "#/channels/jobEvents"},
            "messages": refs("jobEvents", list(event_messages)),
        },
        "publishLogChunks": {
            "action": "send",
            "summary": "Executors publish the output of each step.",
            "channel": {"$ref": "#/channels/logChunks"},
            "messages": refs("logChunks", ["LogChunk"]),
        },
        "publishDispatchOrders": {
            "action": "send",
            "summary": "The scheduler sends a run to its pool.",
            "channel": {"$ref": "#/channels/dispatch"},
            "messages": refs("dispatch", ["DispatchOrder"]),
        },
        "receiveDispatchOrders": {
            "action": "receive",
            "summary": "Executors pull orders while they have a free slot.",
            "channel": {"$ref": "#/channels/dispatch"},
            "messages": refs("dispatch", ["DispatchOrder"]),
        },
    }


def _rewrite_refs(value: Any) -> Any:
    """Return `value` with JSON Schema `#/$defs/` refs pointing at components."""
    if isinstance(value, dict):
        return {
            key: (
                item.replace("#/$defs/", _SCHEMAS)
                if key == "$ref" and isinstance(item, str)
                else _rewrite_refs(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_rewrite_refs(item) for item in value]
    return value


def _use_asyncapi_discriminator(schemas: dict[str, Any]) -> None:
    """Turn msgspec's OpenAPI-style discriminators into AsyncAPI's plain name.

    An AsyncAPI Schema Object's `discriminator` is the property name as a
    string; msgspec writes OpenAPI's object with `propertyName` and `mapping`.
    """
    for schema in schemas.values():
        discriminator = schema.get("discriminator")
        if isinstance(discriminator, dict):
            schema["discriminator"] = discriminator["propertyName"]


if __name__ == "__main__":
    print(json.dumps(asyncapi_document(), indent=2, sort_keys=True))
