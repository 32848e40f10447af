"""Examples are valid messages; generated docs are current and internally consistent."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from model_trainer.commands.schema import REGENERATE, render_schema_docs, write_schema_docs
from model_trainer_contracts import decode_command, decode_event, encode
from model_trainer_contracts.examples import EXAMPLES, SUBMIT
from model_trainer_contracts.schema import (
    CONTRACTS_VERSION,
    MESSAGES,
    MessageSpec,
    asyncapi_document,
    dumps,
    example_json,
    json_schemas,
    message_json_schema,
)
from pydantic import JsonValue

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
_ids = [spec.type for spec in MESSAGES]


def _decode(spec: MessageSpec, data: bytes) -> object:
    return decode_command(data) if spec.kind == "command" else decode_event(data)


def test_one_example_per_message_type() -> None:
    assert [example.type for example in EXAMPLES] == _ids
    assert [spec.example for spec in MESSAGES] == list(EXAMPLES)
    assert all(isinstance(spec.example, spec.model) for spec in MESSAGES)


@pytest.mark.parametrize("spec", MESSAGES, ids=_ids)
def test_examples_round_trip(spec: MessageSpec) -> None:
    assert _decode(spec, encode(spec.example)) == spec.example


def _doc_files(root: Path) -> dict[str, bytes]:
    names = ["asyncapi.json", "catalogue.md"]
    names += [p.relative_to(root).as_posix() for p in root.glob("schemas/*.json")]
    names += [p.relative_to(root).as_posix() for p in root.glob("examples/*.json")]
    return {name: (root / name).read_bytes() for name in sorted(names) if (root / name).exists()}


def test_committed_docs_match_the_generator(tmp_path: Path) -> None:
    written = write_schema_docs(tmp_path)
    fresh = _doc_files(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(fresh)
    committed = _doc_files(DOCS)
    stale = sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))
    assert not stale, f"docs/ is stale ({', '.join(stale)}); regenerate with `{REGENERATE}`"


def test_generation_is_deterministic_and_removes_stale_files(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "trainer.job.gone.v1.json").write_text("{}")
    (tmp_path / "README.md").write_text("kept")
    write_schema_docs(tmp_path)
    assert not (tmp_path / "schemas" / "trainer.job.gone.v1.json").exists()
    assert (tmp_path / "README.md").read_text() == "kept"
    assert render_schema_docs() == render_schema_docs()
    assert dumps(asyncapi_document()) == dumps(asyncapi_document())


@pytest.mark.parametrize("spec", MESSAGES, ids=_ids)
def test_docs_examples_decode_to_the_examples(spec: MessageSpec) -> None:
    data = (DOCS / "examples" / f"{spec.type}.json").read_bytes()
    assert _decode(spec, data) == spec.example


def _check(instance: JsonValue, schema: JsonValue, defs: dict[str, JsonValue], at: str) -> None:
    """A small JSON Schema check: objects' required/known properties, const, enum, types."""
    assert isinstance(schema, dict)
    ref = schema.get("$ref")
    if isinstance(ref, str):
        _check(instance, defs[ref.rsplit("/", 1)[-1]], defs, at)
        return
    options = schema.get("oneOf", schema.get("anyOf"))
    if isinstance(options, list):
        passing = 0
        for option in options:
            try:
                _check(instance, option, defs, at)
            except AssertionError:
                continue
            passing += 1
        assert passing >= 1, f"{at}: matches no option"
        return
    if "const" in schema:
        assert instance == schema["const"], at
    enum = schema.get("enum")
    if isinstance(enum, list):
        assert instance in enum, at
    kinds = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    kind = schema.get("type")
    if kind in ("integer", "number"):
        assert not isinstance(instance, bool), at
        assert isinstance(instance, int if kind == "integer" else int | float), at
    elif isinstance(kind, str):
        assert isinstance(instance, kinds[kind]), at
    properties = schema.get("properties")
    if isinstance(instance, dict) and isinstance(properties, dict):
        required = schema.get("required", [])
        assert isinstance(required, list)
        assert {str(r) for r in required} <= instance.keys(), f"{at}: missing {required}"
        if schema.get("additionalProperties") is False:
            assert instance.keys() <= properties.keys(), f"{at}: unknown properties"
        for name, value in instance.items():
            if name in properties:
                _check(value, properties[name], defs, f"{at}.{name}")


@pytest.mark.parametrize("spec", MESSAGES, ids=_ids)
def test_examples_satisfy_their_json_schema(spec: MessageSpec) -> None:
    schema = json_schemas()[spec.type]
    defs = schema.get("$defs", {})
    assert isinstance(defs, dict)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    _check(example_json(spec), schema, defs, spec.type)
    required = schema["required"]
    assert isinstance(required, list)
    assert "type" in required
    if spec.kind == "event":
        envelope = {"type", "event_id", "job_id", "user_id", "ts", "seq", "attempt", "labels"}
        assert envelope <= {str(name) for name in required}


def test_command_schemas_refuse_unknown_fields_and_event_schemas_do_not() -> None:
    for spec in MESSAGES:
        closed = message_json_schema(spec).get("additionalProperties") is False
        assert closed is (spec.kind == "command"), spec.type


def _refs(node: JsonValue) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return [str(r) for r in found] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _pointer(document: JsonValue, ref: str) -> JsonValue:
    node = document
    for part in ref.removeprefix("#/").split("/"):
        assert isinstance(node, dict), ref
        assert part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


def test_asyncapi_describes_three_topics_keys_and_headers() -> None:
    doc = asyncapi_document()
    assert doc["asyncapi"] == "3.0.0"
    for ref in _refs(doc):
        _pointer(doc, ref)
    channels = ("jobs", "metrics", "deadLetters")
    addresses = {_pointer(doc, f"#/channels/{c}/address") for c in channels}
    assert addresses == {"trainer.jobs", "trainer.metrics", "trainer.jobs.dlq"}
    actions = {
        name: (_pointer(doc, f"#/operations/{name}/action"), len(ops))
        for name, ops in [
            (n, _pointer(doc, f"#/operations/{n}/messages"))
            for n in ("receiveCommands", "sendEvents", "sendDeadLetters")
        ]
        if isinstance(ops, list)
    }
    assert actions == {
        "receiveCommands": ("receive", 2),
        "sendEvents": ("send", 6),
        "sendDeadLetters": ("send", 1),
    }
    for spec in MESSAGES:
        message = f"#/components/messages/{spec.type}"
        assert _pointer(doc, f"{message}/bindings/kafka/key/type") == "string"
        headers = _pointer(doc, f"{message}/headers/properties")
        assert isinstance(headers, dict)
        assert "ce_specversion" in headers
        assert _pointer(doc, f"{message}/headers/properties/ce_type/const") == spec.type
    dlq = _pointer(doc, "#/components/messages/trainer.jobs.dead-letter/headers/required")
    assert dlq == [
        "error_code",
        "error_message",
        "original_topic",
        "original_partition",
        "original_offset",
    ]


def test_asyncapi_schemas_use_no_openapi_only_keywords() -> None:
    text = json.dumps(_pointer(asyncapi_document(), "#/components/schemas"))
    assert "prefixItems" not in text
    assert '"propertyName"' not in text
    assert "#/$defs/" not in text


def test_contracts_version_matches_the_distribution() -> None:
    meta = tomllib.loads((ROOT / "contracts" / "pyproject.toml").read_text())
    assert meta["project"]["version"] == CONTRACTS_VERSION


def test_aliases_are_in_the_schema_and_the_catalogue() -> None:
    schema = json_schemas()["trainer.job.submit.v1"]
    defs = schema["$defs"]
    assert isinstance(defs, dict)
    training = defs["TrainingSpec"]
    assert isinstance(training, dict)
    properties = training["properties"]
    assert isinstance(properties, dict)
    alias = properties["gradient_accumulation_steps"]
    assert isinstance(alias, dict)
    assert alias["x-alias-of"] == "grad_accum_steps"
    assert (alias["minimum"], alias["maximum"]) == (1, 1024)
    exclusive = {"not": {"required": ["grad_accum_steps", "gradient_accumulation_steps"]}}
    all_of = training["allOf"]
    assert isinstance(all_of, list)
    assert exclusive in all_of
    body = json.loads(encode(SUBMIT))
    body["training"] = {"gradient_accumulation_steps": 2, "lr_scheduler_type": "linear"}
    _check(body, schema, defs, "submit")  # the schema accepts what the decoder accepts
    catalogue = render_schema_docs()["catalogue.md"]
    for canonical, other in [
        ("training.grad_accum_steps", "gradient_accumulation_steps"),
        ("training.schedule", "lr_scheduler_type"),
        ("training.grad_clip", "max_grad_norm"),
        ("training.eval_every", "eval_steps"),
        ("model.block_size", "seq_len"),
    ]:
        rows = [line for line in catalogue.splitlines() if line.startswith(f"| `{canonical}`")]
        assert any(f"alias: `{other}`" in row for row in rows), canonical
        assert f"`training.{other}`" not in catalogue
