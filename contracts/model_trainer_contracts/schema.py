"""Machine-readable descriptions of the wire format: JSON Schema per message, AsyncAPI 3.0.

Pure functions returning JSON data with every object's keys sorted, so documents generated
from them are byte-stable; writing them to files is the caller's business (see the service's
``model-trainer schema`` command).
"""

from __future__ import annotations

import builtins
import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, JsonValue, TypeAdapter
from pydantic.json_schema import models_json_schema

from .codec import CONTENT_TYPE, ce_headers, encode
from .commands import JOB_ID_PATTERN, CancelJobV1, SubmitJobV1
from .errors import ModelTrainerErrorCode
from .events import (
    CompletedEventV1,
    ConfigEventV1,
    DownloadEventV1,
    FailedEventV1,
    ProgressEventV1,
    QueuedEventV1,
)
from .examples import (
    CANCEL,
    COMPLETED,
    CONFIG,
    DOWNLOAD,
    FAILED,
    PROGRESS,
    QUEUED,
    SUBMIT,
    Message,
)
from .topics import (
    COMMANDS_TOPIC,
    DEAD_LETTER_TOPIC,
    DLQ_ERROR_CODE_HEADER,
    DLQ_ERROR_MESSAGE_HEADER,
    DLQ_ORIGINAL_OFFSET_HEADER,
    DLQ_ORIGINAL_PARTITION_HEADER,
    DLQ_ORIGINAL_TOPIC_HEADER,
    EVENTS_TOPIC,
)

CONTRACTS_VERSION = "1.0.0"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
KAFKA_BINDING_VERSION = "0.5.0"

JsonObject = dict[str, JsonValue]


@dataclass(frozen=True)
class MessageSpec:
    """One message type: its model, where it travels and a realistic example."""

    type: str
    model: builtins.type[BaseModel]
    topic: str
    kind: Literal["command", "event"]
    example: Message

    @property
    def name(self) -> str:
        return self.model.__name__

    @property
    def description(self) -> str:
        return " ".join((self.model.__doc__ or "").split())


MESSAGES: tuple[MessageSpec, ...] = (
    MessageSpec("trainer.job.submit.v1", SubmitJobV1, COMMANDS_TOPIC, "command", SUBMIT),
    MessageSpec("trainer.job.cancel.v1", CancelJobV1, COMMANDS_TOPIC, "command", CANCEL),
    MessageSpec("trainer.job.queued.v1", QueuedEventV1, EVENTS_TOPIC, "event", QUEUED),
    MessageSpec("trainer.metrics.config.v1", ConfigEventV1, EVENTS_TOPIC, "event", CONFIG),
    MessageSpec("trainer.metrics.progress.v1", ProgressEventV1, EVENTS_TOPIC, "event", PROGRESS),
    MessageSpec("trainer.metrics.download.v1", DownloadEventV1, EVENTS_TOPIC, "event", DOWNLOAD),
    MessageSpec("trainer.metrics.completed.v1", CompletedEventV1, EVENTS_TOPIC, "event", COMPLETED),
    MessageSpec("trainer.job.failed.v1", FailedEventV1, EVENTS_TOPIC, "event", FAILED),
)
"""Every message type, commands first."""

DEAD_LETTER_DESCRIPTION = (
    "A command the service refused to decode (undecodable, invalid or too large). The record's "
    "value and key are the original bytes, unchanged; why it was refused and where it came from "
    "travel in its headers. A failed event for the job (when its job_id could be read) goes to the "
    "events topic as well."
)


def sorted_json(value: JsonValue) -> JsonValue:
    """``value`` with the keys of every object sorted (lists keep their order)."""
    if isinstance(value, dict):
        return {key: sorted_json(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [sorted_json(item) for item in value]
    return value


def dumps(document: JsonValue) -> str:
    """The canonical text of a generated document: sorted keys, 2-space indent, final newline."""
    return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


_JSON_OBJECT: TypeAdapter[JsonObject] = TypeAdapter(JsonObject)


def _object(value: JsonValue) -> JsonObject:
    """``value``, a JSON object (a copy); anything else raises pydantic's ValidationError."""
    return _JSON_OBJECT.validate_python(value)


def _wire_requirements(spec: MessageSpec, schema: JsonObject) -> JsonObject:
    """Mark as required what the wire requires, beyond what the model's defaults suggest.

    A command's ``type`` has a default in the model but selects the type on the wire, so it
    is required; ``model`` of a submit may be omitted (the backend's defaults apply). The
    service's encoder writes every field of an event, so all of them are present.
    """
    properties = _object(schema.get("properties", {}))
    required = schema.get("required", [])
    names = {str(name) for name in required} if isinstance(required, list) else set()
    if spec.kind == "event":
        names = set(properties)
    else:
        names.add("type")
    if spec.type == "trainer.job.submit.v1":  # by type, so altered copies of the model match
        names.discard("model")
    return {**schema, "required": [name for name in properties if name in names]}


def message_json_schema(spec: MessageSpec, *, sort_keys: bool = True) -> JsonObject:
    """A self-contained JSON Schema (draft 2020-12) for one message's JSON body."""
    schema: JsonObject = _wire_requirements(spec, spec.model.model_json_schema(mode="validation"))
    schema = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:model-trainer:schema:{spec.type}",
        **schema,
        "description": spec.description,
    }
    return _object(sorted_json(schema)) if sort_keys else schema


def reader_json_schema(spec: MessageSpec) -> JsonObject:
    """What a reader built from the current model accepts: the schema the compatibility check
    holds against the released one.

    The committed schemas mark every event field required because the service writes all of
    them; a reader needs only the fields without a default, so a new event field with a
    default is a compatible addition.
    """
    schema = message_json_schema(spec)
    if spec.kind == "event":
        needed = spec.model.model_json_schema(mode="validation").get("required", [])
        schema["required"] = needed if isinstance(needed, list) else []
    return schema


def json_schemas() -> dict[str, JsonObject]:
    """Every message's JSON Schema, by message type."""
    return {spec.type: message_json_schema(spec) for spec in MESSAGES}


def example_json(spec: MessageSpec) -> JsonObject:
    """The message's example as the JSON the codec puts on the wire."""
    return _object(json.loads(encode(spec.example)))


def example_headers(spec: MessageSpec) -> dict[str, str]:
    """The example's CloudEvents headers (commands get a fixed id and time, for stable docs)."""
    headers = {name: value.decode() for name, value in ce_headers(spec.example)}
    if spec.kind == "command":
        headers["ce_id"] = "5a0c7b8e-3d1f-4c2a-9e6b-7f8d9c0a1b2c"
        headers["ce_time"] = "2025-03-14T09:26:41.250000Z"
    return headers


def cloudevents_headers_schema(spec: MessageSpec) -> JsonObject:
    """Kafka headers of a message: CloudEvents 1.0 Kafka binding, binary content mode."""
    properties: JsonObject = {
        "ce_specversion": {"type": "string", "const": "1.0", "description": "CloudEvents 1.0."},
        "ce_id": {
            "type": "string",
            "minLength": 1,
            "description": "Unique per message; an event's own event_id.",
        },
        "ce_source": {
            "type": "string",
            "format": "uri-reference",
            "description": "Who published it; the service uses 'model-trainer' unless told.",
        },
        "ce_type": {"type": "string", "const": spec.type, "description": "The message type."},
        "ce_time": {
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339, UTC; an event's own ts.",
        },
        "content-type": {
            "type": "string",
            "const": CONTENT_TYPE,
            "description": "CloudEvents datacontenttype.",
        },
    }
    if spec.kind == "event":
        note = "The service sets all of them on every event."
        required: list[JsonValue] = list(properties)
    else:
        note = "Recommended (ce_headers builds them); the service decodes the body alone."
        required = []
    return {
        "type": "object",
        "description": f"CloudEvents Kafka binding, binary mode; values are UTF-8. {note}",
        "properties": properties,
        "required": required,
    }


def dead_letter_headers_schema() -> JsonObject:
    """Kafka headers the service adds to a dead-lettered command (values are UTF-8)."""
    decimal: JsonObject = {"type": "string", "pattern": "^[0-9]+$"}
    properties: JsonObject = {
        DLQ_ERROR_CODE_HEADER: {
            "type": "string",
            "enum": [str(code) for code in ModelTrainerErrorCode],
            "description": "Why it was refused, e.g. COMMAND_INVALID.",
        },
        DLQ_ERROR_MESSAGE_HEADER: {
            "type": "string",
            "description": "Human-readable reason naming the offending field; at most 4096 bytes.",
        },
        DLQ_ORIGINAL_TOPIC_HEADER: {"type": "string", "description": "Topic it was read from."},
        DLQ_ORIGINAL_PARTITION_HEADER: {**decimal, "description": "Partition, in decimal."},
        DLQ_ORIGINAL_OFFSET_HEADER: {**decimal, "description": "Offset, in decimal."},
    }
    return {
        "type": "object",
        "description": "The dead letter's only headers (the refused record's own are not kept).",
        "properties": properties,
        "required": list(properties),
    }


def _job_id_key(spec: MessageSpec) -> JsonObject:
    return {
        "type": "string",
        "pattern": JOB_ID_PATTERN,
        "description": f"The job_id, UTF-8: a job's {spec.kind}s stay ordered on one partition.",
    }


def _asyncapi_schema(value: JsonValue) -> JsonValue:
    """Pydantic's 2020-12 output as an AsyncAPI Schema Object (a JSON Schema draft-07 superset):
    ``prefixItems`` becomes the array form of ``items``, OpenAPI-style discriminator objects go
    (``oneOf`` over ``const`` tags says the same), ``$defs`` refs point into components."""
    if isinstance(value, list):
        return [_asyncapi_schema(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: JsonObject = {}
    for key, item in value.items():
        if key == "discriminator" and isinstance(item, dict):
            continue
        out["items" if key == "prefixItems" else key] = _asyncapi_schema(item)
    if "prefixItems" in value:
        out["additionalItems"] = False
    return out


def _components_schemas() -> JsonObject:
    _, top = models_json_schema(
        [(spec.model, "validation") for spec in MESSAGES],
        ref_template="#/components/schemas/{model}",
    )
    schemas = _object(top.get("$defs", {}))
    for spec in MESSAGES:
        schemas[spec.name] = {
            **_wire_requirements(spec, _object(schemas[spec.name])),
            "description": spec.description,
        }
    return _object(_asyncapi_schema(schemas))


def _message(spec: MessageSpec) -> JsonObject:
    return {
        "name": spec.type,
        "title": spec.name,
        "summary": spec.description.split(". ")[0].rstrip(".") + ".",
        "description": spec.description,
        "contentType": CONTENT_TYPE,
        "headers": cloudevents_headers_schema(spec),
        "payload": {"$ref": f"#/components/schemas/{spec.name}"},
        "bindings": {"kafka": {"key": _job_id_key(spec), "bindingVersion": KAFKA_BINDING_VERSION}},
        "examples": [
            {
                "name": spec.type.replace(".", "-"),
                "summary": f"A realistic {spec.type}.",
                "headers": dict(example_headers(spec)),
                "payload": example_json(spec),
            }
        ],
    }


def _dead_letter_message() -> JsonObject:
    return {
        "name": "trainer.jobs.dead-letter",
        "title": "Dead-lettered command",
        "summary": "A command the service could not accept, byte for byte.",
        "description": DEAD_LETTER_DESCRIPTION,
        "contentType": "application/octet-stream",
        "headers": dead_letter_headers_schema(),
        "payload": {
            "type": "string",
            "format": "binary",
            "description": "The refused record's value, unchanged (not necessarily JSON).",
        },
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "The refused record's key, unchanged; empty when it had none.",
                },
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
        "examples": [
            {
                "name": "invalid-submit",
                "summary": "A submit refused for a negative learning rate.",
                "headers": {
                    DLQ_ERROR_CODE_HEADER: "COMMAND_INVALID",
                    DLQ_ERROR_MESSAGE_HEADER: (
                        "invalid command: training.learning_rate: Input should be greater than 0"
                    ),
                    DLQ_ORIGINAL_TOPIC_HEADER: COMMANDS_TOPIC,
                    DLQ_ORIGINAL_PARTITION_HEADER: "3",
                    DLQ_ORIGINAL_OFFSET_HEADER: "18842",
                },
            }
        ],
    }


def _channel(address: str, description: str, message_ids: list[str]) -> JsonObject:
    return {
        "address": address,
        "description": description,
        "messages": {mid: {"$ref": f"#/components/messages/{mid}"} for mid in message_ids},
        "bindings": {"kafka": {"topic": address, "bindingVersion": KAFKA_BINDING_VERSION}},
    }


def _operation(
    action: Literal["send", "receive"], channel: str, message_ids: list[str], summary: str
) -> JsonObject:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "summary": summary,
        "messages": [{"$ref": f"#/channels/{channel}/messages/{mid}"} for mid in message_ids],
    }


def asyncapi_document() -> JsonObject:
    """AsyncAPI 3.0 for the service: what it receives and sends, on which topics, keyed how."""
    commands = [spec.type for spec in MESSAGES if spec.kind == "command"]
    events = [spec.type for spec in MESSAGES if spec.kind == "event"]
    dead_letter = "trainer.jobs.dead-letter"
    messages: JsonObject = {spec.type: _message(spec) for spec in MESSAGES}
    messages[dead_letter] = _dead_letter_message()
    document: JsonObject = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "model-trainer",
            "version": CONTRACTS_VERSION,
            "description": (
                "Kafka-native service that trains language models on request. Commands are "
                "strict (unknown fields refused); events are tolerant (unknown fields ignored). "
                "Every message is keyed by its job_id and carries CloudEvents headers (Kafka "
                "binding, binary mode)."
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": CONTENT_TYPE,
        "channels": {
            "jobs": _channel(COMMANDS_TOPIC, "Commands to the service.", commands),
            "metrics": _channel(EVENTS_TOPIC, "What the service reports about jobs.", events),
            "deadLetters": _channel(
                DEAD_LETTER_TOPIC, "Commands the service refused.", [dead_letter]
            ),
        },
        "operations": {
            "receiveCommands": _operation(
                "receive", "jobs", commands, "The service consumes job commands."
            ),
            "sendEvents": _operation(
                "send",
                "metrics",
                events,
                "The service reports queueing, config, progress and outcome.",
            ),
            "sendDeadLetters": _operation(
                "send", "deadLetters", [dead_letter], "The service dead-letters bad commands."
            ),
        },
        "components": {"messages": messages, "schemas": _components_schemas()},
    }
    return _object(sorted_json(document))
