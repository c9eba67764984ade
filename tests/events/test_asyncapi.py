"""The AsyncAPI document: its shape, its references and its payload schemas."""

import json
import re
from typing import Any

import jsonschema
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from libs.events import JobSubmitted, LogChunk, Repository, encode
from libs.events.asyncapi import asyncapi_document
from libs.events.types import EVENT_TYPES, DispatchOrder, RunStarted
from services.gateway.api import add_routes

REQUIRED_CHANNELS = {
    "stasis.jobs.{job_id}",
    "stasis.logs.{job_id}.{run_id}.{step}",
    "stasis.dispatch.{pool}",
}


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        assert part in node, f"{ref} does not resolve at {part!r}"
        node = node[part]
    return node


def all_refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        for item in value.values():
            found.extend(all_refs(item))
        return found
    if isinstance(value, list):
        return [ref for item in value for ref in all_refs(item)]
    return []


def test_asyncapi_required_fields() -> None:
    document = asyncapi_document()

    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"]
    assert document["info"]["version"]
    assert document["defaultContentType"] == "application/json"
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == REQUIRED_CHANNELS
    for name, operation in document["operations"].items():
        assert operation["action"] in ("send", "receive"), name
        assert "$ref" in operation["channel"], name


def test_asyncapi_every_ref_resolves() -> None:
    document = asyncapi_document()

    refs = all_refs(document)

    assert refs
    for ref in refs:
        resolve(document, ref)


def test_asyncapi_channel_parameters_match_address() -> None:
    document = asyncapi_document()

    for name, channel in document["channels"].items():
        in_address = set(re.findall(r"{(\w+)}", channel["address"]))
        assert set(channel["parameters"]) == in_address, name


def test_asyncapi_operation_messages_on_channel() -> None:
    document = asyncapi_document()

    for name, operation in document["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), name


def test_asyncapi_references_every_event_type() -> None:
    document = asyncapi_document()
    channel = document["channels"]["jobEvents"]
    named = {
        resolve(document, ref["$ref"])["name"] for ref in channel["messages"].values()
    }
    published = {
        ref["$ref"].rsplit("/", 1)[1]
        for ref in document["operations"]["publishJobEvents"]["messages"]
    }

    for event_type in EVENT_TYPES:
        assert event_type.__struct_config__.tag in named
        assert event_type.__name__ in published
        assert event_type.__name__ in document["components"]["schemas"]


def payload_validator(document: dict[str, Any], message: str) -> Any:
    payload_ref = document["components"]["messages"][message]["payload"]["$ref"]
    schema = {"components": document["components"], "$ref": payload_ref}
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_asyncapi_payloads_accept_real_messages() -> None:
    document = asyncapi_document()
    submitted = JobSubmitted(
        job_id="01jobjobjobjobjobjobjobjob",
        run_id="01runrunrunrunrunrunrunrun",
        repository=Repository(url="https://example.invalid/repo.git"),
        prev_hash=None,
    )
    started = RunStarted(
        job_id=submitted.job_id,
        run_id=submitted.run_id,
        executor_id="ex1",
        prev_hash="0" * 64,
    )
    chunk = LogChunk(
        job_id=submitted.job_id,
        run_id=submitted.run_id,
        step="build",
        seq=1,
        stream="stdout",
        data="hello\n",
    )
    order = DispatchOrder(job_id=submitted.job_id, run_id=submitted.run_id)
    cases = [
        ("JobSubmitted", submitted),
        ("RunStarted", started),
        ("LogChunk", chunk),
        ("DispatchOrder", order),
    ]

    for message, value in cases:
        validator = payload_validator(document, message)
        errors = list(validator.iter_errors(json.loads(encode(value))))
        assert errors == [], (message, errors)


def test_asyncapi_payload_rejects_wrong_type() -> None:
    document = asyncapi_document()
    validator = payload_validator(document, "RunStarted")

    errors = list(validator.iter_errors({"type": "run.started", "job_id": 1}))

    assert errors


async def test_gateway_serves_asyncapi() -> None:
    app = web.Application()
    add_routes(app)

    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        response = await client.get("/api/v1/schemas/asyncapi.json")
        served = await response.json()

    assert response.status == 200
    assert served == asyncapi_document()
