"""Write the contract's documents: JSON Schemas, AsyncAPI, examples and a Markdown catalogue.

``model-trainer schema --out DIR`` calls :func:`write_schema_docs`; ``docs/`` at the repository
root holds the committed output, and a test fails when it is stale. The schemas committed under
``docs/schemas/`` are the released contract: the generator refuses to overwrite one with a schema
that is not BACKWARD-compatible with it (:func:`released_incompatibilities`), so breaking a
message takes a new version (``.v2``) next to it.
"""

from __future__ import annotations

import json
from pathlib import Path

from model_trainer_contracts import ERROR_INFO
from model_trainer_contracts.compat import Incompatibility, check_backward
from model_trainer_contracts.schema import (
    DEAD_LETTER_DESCRIPTION,
    MESSAGES,
    JsonObject,
    MessageSpec,
    asyncapi_document,
    cloudevents_headers_schema,
    dead_letter_headers_schema,
    dumps,
    example_json,
    message_json_schema,
    reader_json_schema,
)
from model_trainer_contracts.topics import DEAD_LETTER_TOPIC
from pydantic import JsonValue

REGENERATE = "model-trainer schema --out docs"


class IncompatibleContractError(Exception):
    """The current contracts cannot read what the released schemas describe."""

    def __init__(self, found: list[Incompatibility]) -> None:
        self.found = found
        lines = "\n".join(f"  {item}" for item in found)
        super().__init__(
            f"{len(found)} change(s) not BACKWARD-compatible with the released schemas:\n"
            f"{lines}\nKeep the released version readable; to break it, add a new version "
            "(.v2) of the message next to it."
        )


def released_incompatibilities(schemas_dir: Path) -> list[Incompatibility]:
    """How the current contracts break the schemas released in ``schemas_dir``.

    A message type without a released schema is new, so anything goes; a released type the
    contracts no longer define is a retired version, whose file the generator removes.
    """
    found: list[Incompatibility] = []
    for spec in MESSAGES:
        path = schemas_dir / f"{spec.type}.json"
        if path.exists():
            released = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(released, dict):
                found += check_backward(spec.type, released, reader_json_schema(spec))
    return found


def write_schema_docs(out_dir: Path) -> list[Path]:
    """Write every generated document under ``out_dir``; return the paths written, sorted.

    Writes ``schemas/<type>.json``, ``examples/<type>.json``, ``asyncapi.json`` and
    ``catalogue.md``. Stale ``*.json`` files in ``schemas/`` and ``examples/`` (a message type
    that no longer exists) are removed; nothing else in ``out_dir`` is touched. Raises
    :class:`IncompatibleContractError`, writing nothing, when a schema already in
    ``schemas/`` would be replaced by one that cannot read its messages.
    """
    found = released_incompatibilities(out_dir / "schemas")
    if found:
        raise IncompatibleContractError(found)
    documents = render_schema_docs()
    for folder in ("schemas", "examples"):
        for stale in sorted((out_dir / folder).glob("*.json")):
            if stale.relative_to(out_dir).as_posix() not in documents:
                stale.unlink()
    written: list[Path] = []
    for relative, text in sorted(documents.items()):
        path = out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return written


def render_schema_docs() -> dict[str, str]:
    """The generated documents as text, by path relative to the output folder."""
    documents = {"asyncapi.json": dumps(asyncapi_document()), "catalogue.md": render_catalogue()}
    for spec in MESSAGES:
        documents[f"schemas/{spec.type}.json"] = dumps(message_json_schema(spec))
        documents[f"examples/{spec.type}.json"] = _pretty(example_json(spec))
    return documents


def _pretty(value: JsonValue) -> str:
    """Indented JSON in the codec's field order (declaration order), final newline."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(value: JsonValue) -> str:
    return "`" + json.dumps(value, ensure_ascii=False) + "`"


class _Schema:
    """Resolves ``#/$defs/...`` references of one self-contained message schema."""

    def __init__(self, root: JsonObject) -> None:
        defs = root.get("$defs", {})
        self.defs: JsonObject = defs if isinstance(defs, dict) else {}

    def resolve(self, node: JsonObject) -> JsonObject:
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = self.defs.get(ref.removeprefix("#/$defs/"))
            if isinstance(target, dict):
                return target
        return node

    def type_of(self, node: JsonObject) -> str:
        ref = node.get("$ref")
        if isinstance(ref, str):
            return ref.rsplit("/", 1)[-1]
        if "const" in node:
            return _code(node["const"])
        enum = node.get("enum")
        if isinstance(enum, list):
            return "one of " + ", ".join(_code(item) for item in enum)
        for union in ("oneOf", "anyOf"):
            options = node.get(union)
            if isinstance(options, list):
                return " or ".join(self.type_of(o) for o in options if isinstance(o, dict))
        kind = node.get("type")
        if kind == "array":
            prefix, items = node.get("prefixItems"), node.get("items")
            if isinstance(prefix, list):
                return "[" + ", ".join(self.type_of(o) for o in prefix if isinstance(o, dict)) + "]"
            return f"array of {self.type_of(items)}" if isinstance(items, dict) else "array"
        if kind == "object":
            values = node.get("additionalProperties")
            if isinstance(values, dict):
                return f"map of string to {self.type_of(values) or 'JSON'}"
            return "object"
        fmt = node.get("format")
        if isinstance(kind, str):
            return f"{kind} ({fmt})" if isinstance(fmt, str) else kind
        return "JSON" if not node else ""

    def bounds(self, node: JsonObject) -> list[str]:
        found: list[str] = []
        marks = {
            "minimum": "≥",
            "exclusiveMinimum": ">",
            "maximum": "≤",
            "exclusiveMaximum": "<",
            "minLength": "length ≥",
            "maxLength": "length ≤",
            "minProperties": "entries ≥",
            "maxProperties": "entries ≤",
        }
        for options in (node.get("anyOf"), node.get("prefixItems")):
            if isinstance(options, list):
                for option in options:
                    if isinstance(option, dict) and option.get("type") != "null":
                        found += [b for b in self.bounds(option) if b not in found]
        for key, mark in marks.items():
            if key in node:
                found.append(f"{mark} {json.dumps(node[key])}")
        if isinstance(node.get("pattern"), str):
            found.append(f"pattern `{node['pattern']}`")
        keys = node.get("propertyNames")
        if isinstance(keys, dict) and (key_bounds := self.bounds(keys)):
            found.append("keys " + ", ".join(key_bounds))
        values = node.get("additionalProperties")
        if isinstance(values, dict) and (value_bounds := self.bounds(values)):
            found.append("values " + ", ".join(value_bounds))
        return found


def _rows(schema: _Schema, node: JsonObject, prefix: str, note: str) -> list[str]:
    """Table rows for the properties of ``node``, nested objects flattened to dotted names."""
    rows: list[str] = []
    properties = node.get("properties", {})
    required = node.get("required", [])
    if not isinstance(properties, dict) or not isinstance(required, list):
        return rows
    aliases: dict[str, list[str]] = {}
    for name, raw in properties.items():
        canonical = raw.get("x-alias-of") if isinstance(raw, dict) else None
        if isinstance(canonical, str):
            aliases.setdefault(canonical, []).append(name)
    alias_names = {alias for names in aliases.values() for alias in names}
    for name, raw in properties.items():
        if not isinstance(raw, dict) or name in alias_names:  # listed with their field
            continue
        path = f"{prefix}{name}"
        target = schema.resolve(raw)
        about = raw.get("description") or target.get("description") or ""
        facts = schema.bounds(raw)
        if "default" in raw:
            facts.append(f"default {_code(raw['default'])}")
        if name in aliases:
            facts.append("alias: " + ", ".join(f"`{alias}`" for alias in aliases[name]))
        text = ". ".join(part for part in [note, "; ".join(facts), str(about)] if part)
        needed = "yes" if name in required else "no"
        rows.append(f"| `{path}` | {_cell(schema.type_of(raw))} | {needed} | {_cell(text)} |")
        if "properties" in target:
            rows += _rows(schema, target, f"{path}.", note)
        variants = raw.get("oneOf")
        if isinstance(variants, list):
            for variant in variants:
                if isinstance(variant, dict):
                    model = schema.resolve(variant)
                    tag = _variant_tag(model)
                    rows += _rows(schema, model, f"{path}.", f"{note} when {tag}".strip())
    return rows


def _variant_tag(model: JsonObject) -> str:
    properties = model.get("properties", {})
    if isinstance(properties, dict):
        for name, node in properties.items():
            if isinstance(node, dict) and "const" in node:
                return f"{name} = {_code(node['const'])}"
    return str(model.get("title", ""))


def _table(header: list[str], rows: list[str]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *rows,
    ]


def _header_rows(headers: JsonObject) -> list[str]:
    properties = headers.get("properties", {})
    required = headers.get("required", [])
    rows: list[str] = []
    if isinstance(properties, dict) and isinstance(required, list):
        for name, node in properties.items():
            if isinstance(node, dict):
                value = _code(node["const"]) if "const" in node else _Schema({}).type_of(node)
                if node.get("enum") == [str(code) for code in ERROR_INFO]:
                    value = "an [error code](#error-codes)"
                needed = "yes" if name in required else "no"
                about = _cell(str(node.get("description", "")))
                rows.append(f"| `{name}` | {_cell(value)} | {needed} | {about} |")
    return rows


def _any_message_headers() -> JsonObject:
    """The events' CloudEvents headers, ``ce_type`` described rather than fixed to one type."""
    headers = cloudevents_headers_schema(MESSAGES[-1])
    properties = headers.get("properties")
    if isinstance(properties, dict):
        properties["ce_type"] = {"type": "string", "description": "The message's `type`."}
    return headers


def _message_section(spec: MessageSpec) -> list[str]:
    schema = message_json_schema(spec, sort_keys=False)
    body = _pretty(example_json(spec)).rstrip("\n")
    return [
        f"### `{spec.type}`",
        "",
        f"- **Model**: `{spec.name}` ({spec.kind})",
        f"- **Topic**: `{spec.topic}`, keyed by `job_id`",
        f"- **Schema**: [schemas/{spec.type}.json](schemas/{spec.type}.json)",
        "",
        spec.description,
        "",
        *_table(
            ["Field", "Type", "Required", "Bounds and description"],
            _rows(_Schema(schema), schema, "", ""),
        ),
        "",
        f"Example ([examples/{spec.type}.json](examples/{spec.type}.json)):",
        "",
        "```json",
        body,
        "```",
        "",
    ]


def render_catalogue() -> str:
    """The Markdown catalogue: every message with its fields and an example; error codes."""
    lines = [
        "# model-trainer message catalogue",
        "",
        f"Generated by `{REGENERATE}`; do not edit by hand.",
        "",
        "Commands are strict: a field the contract does not define is refused. A few command "
        "fields also accept another name (its alias, e.g. Hugging Face's), listed with the "
        "field; messages always carry the canonical name. Events are tolerant: readers ignore "
        "fields they do not know, so new optional fields keep the v1 types, and readers using "
        "`decode_event_tolerant` skip event types they do not know. Bodies are compact UTF-8 "
        "JSON; every message is keyed by its `job_id`.",
        "",
        "## Messages",
        "",
        *_table(
            ["Type", "Kind", "Topic", "Description"],
            [
                f"| [`{s.type}`](#{s.type.replace('.', '')}) | {s.kind} | `{s.topic}` "
                f"| {_cell(s.description)} |"
                for s in MESSAGES
            ],
        ),
        "",
        "## Kafka headers (CloudEvents, binary mode)",
        "",
        "Per the CloudEvents 1.0 Kafka protocol binding, binary content mode: the body is the "
        "message, attributes travel as headers with UTF-8 values.",
        "",
        *_table(
            ["Header", "Value", "Required on events", "Description"],
            _header_rows(_any_message_headers()),
        ),
        "",
        "On commands the headers are recommended, not required: the service reads the body's "
        "`type`.",
        "",
        "## Commands and events",
        "",
    ]
    for spec in MESSAGES:
        lines += _message_section(spec)
    lines += [
        f"## Dead letters: `{DEAD_LETTER_TOPIC}`",
        "",
        DEAD_LETTER_DESCRIPTION,
        "",
        *_table(
            ["Header", "Value", "Required", "Description"],
            _header_rows(dead_letter_headers_schema()),
        ),
        "",
        "## Error codes",
        "",
        "Carried as `code` in `trainer.job.failed.v1` and as the `error_code` header of dead "
        "letters.",
        "",
        *_table(
            ["Code", "HTTP status", "Retryable", "Description"],
            [
                f"| `{code}` | {info.http_status} | {'yes' if info.retryable else 'no'} "
                f"| {_cell(info.description)} |"
                for code, info in ERROR_INFO.items()
            ],
        ),
        "",
    ]
    return "\n".join(lines)
