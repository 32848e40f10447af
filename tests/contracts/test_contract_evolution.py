"""The contracts stay BACKWARD-compatible with the schemas released under docs/schemas/.

The fixtures are altered copies of the contract models (a field dropped, renamed, narrowed,
made required; an enum value removed), each checked against the committed schema of the
message it copies, as a change to ``contracts/`` would be.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Literal

import pytest
from model_trainer.commands.cli import app
from model_trainer.commands.schema import (
    IncompatibleContractError,
    released_incompatibilities,
    write_schema_docs,
)
from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    FailedEventV1,
    ModelTrainerErrorCode,
    ProgressEventV1,
    SubmitJobV1,
    TrainingSpec,
)
from model_trainer_contracts.compat import (
    NARROWED_TYPE,
    NEW_REQUIRED_FIELD,
    REMOVED_ENUM_VALUE,
    REMOVED_FIELD,
    check_backward,
)
from model_trainer_contracts.schema import MESSAGES, reader_json_schema
from pydantic import BaseModel, JsonValue
from pydantic.fields import FieldInfo
from typer.testing import CliRunner

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def _copy(
    model: type[BaseModel], drop: tuple[str, ...] = (), **changed: FieldInfo
) -> type[BaseModel]:
    """A copy of a contract model, as an edit to ``contracts/`` would leave it."""
    fields = {n: i for n, i in model.model_fields.items() if n not in drop} | changed
    namespace: dict[str, object] = {
        "__annotations__": {name: info.annotation for name, info in fields.items()},
        "__doc__": model.__doc__,
        "model_config": model.model_config,
        **fields,
    }
    copy = type(model.__name__, (BaseModel,), namespace)
    assert issubclass(copy, BaseModel)
    return copy


def _check(model: type[BaseModel]) -> list[tuple[str, str]]:
    """(field, rule) of every incompatibility of ``model`` with its released schema."""
    spec = next(s for s in MESSAGES if s.model.__name__ == model.__name__)
    released = json.loads((SCHEMAS / f"{spec.type}.json").read_text())
    found = check_backward(spec.type, released, reader_json_schema(replace(spec, model=model)))
    return [(item.field, item.rule) for item in found]


def test_the_current_contracts_read_every_released_schema() -> None:
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(
        f"{s.type}.json" for s in MESSAGES
    )
    assert released_incompatibilities(SCHEMAS) == []


def _training(max_steps_le: int) -> type[BaseModel]:
    bounded = FieldInfo(annotation=int | None, default=None, ge=1, le=max_steps_le)
    return _copy(TrainingSpec, max_steps=bounded)


_TRAINING_LOWER = _training(5000)
_TRAINING_RAISED = _training(10**9)

BREAKING: list[tuple[str, type[BaseModel], list[tuple[str, str]]]] = [
    ("event field removed", _copy(ConfigEventV1, drop=("device",)), [("device", REMOVED_FIELD)]),
    (
        "event field renamed",
        _copy(ProgressEventV1, drop=("train_loss",), training_loss=FieldInfo(annotation=float)),
        [("train_loss", REMOVED_FIELD), ("training_loss", NEW_REQUIRED_FIELD)],
    ),
    (
        "event field no longer nullable",
        _copy(ProgressEventV1, val_loss=FieldInfo(annotation=float, default=0.0)),
        [("val_loss", NARROWED_TYPE)],
    ),
    (
        "event number narrowed to integer",
        _copy(CompletedEventV1, duration_s=FieldInfo(annotation=int, ge=0)),
        [("duration_s", NARROWED_TYPE)],
    ),
    (
        "event field added without a default",
        _copy(CompletedEventV1, region=FieldInfo(annotation=str)),
        [("region", NEW_REQUIRED_FIELD)],
    ),
    (
        "error code removed",
        _copy(
            FailedEventV1,
            code=FieldInfo(annotation=Literal["INTERNAL_ERROR", "TRAINING_CANCELLED"]),
        ),
        [("code", REMOVED_ENUM_VALUE)],
    ),
    (
        "command field added without a default",
        _copy(SubmitJobV1, queue_class=FieldInfo(annotation=str)),
        [("queue_class", NEW_REQUIRED_FIELD)],
    ),
    (
        "nested command bound lowered",
        _copy(
            SubmitJobV1,
            training=FieldInfo(annotation=_TRAINING_LOWER, default_factory=_TRAINING_LOWER),
        ),
        [("training.max_steps", NARROWED_TYPE)],
    ),
    (
        "command field removed",
        _copy(SubmitJobV1, drop=("priority",)),
        [("priority", REMOVED_FIELD)],
    ),
]


@pytest.mark.parametrize(
    ("model", "expected"), [(m, e) for _, m, e in BREAKING], ids=[n for n, _, _ in BREAKING]
)
def test_an_incompatible_change_is_refused_with_the_field_named(
    model: type[BaseModel], expected: list[tuple[str, str]]
) -> None:
    assert _check(model) == expected


COMPATIBLE: list[tuple[str, type[BaseModel]]] = [
    (
        "event field added with a default",
        _copy(CompletedEventV1, region=FieldInfo(annotation=str, default="eu")),
    ),
    (
        "event field made nullable",
        _copy(ProgressEventV1, train_loss=FieldInfo(annotation=float | None, default=None)),
    ),
    (
        "error code added",
        _copy(
            FailedEventV1, code=FieldInfo(annotation=ModelTrainerErrorCode | Literal["NEW_CODE"])
        ),
    ),
    (
        "command field added with a default",
        _copy(SubmitJobV1, queue_class=FieldInfo(annotation=str, default="std")),
    ),
    (
        "nested command bound raised",
        _copy(
            SubmitJobV1,
            training=FieldInfo(annotation=_TRAINING_RAISED, default_factory=_TRAINING_RAISED),
        ),
    ),
]


@pytest.mark.parametrize("model", [m for _, m in COMPATIBLE], ids=[n for n, _ in COMPATIBLE])
def test_a_compatible_change_passes(model: type[BaseModel]) -> None:
    assert _check(model) == []


def _released_copy(tmp_path: Path) -> Path:
    """docs/ as released, with one progress field the current contracts no longer have."""
    out = tmp_path / "docs"
    shutil.copytree(SCHEMAS, out / "schemas")
    path = out / "schemas" / "trainer.metrics.progress.v1.json"
    schema = json.loads(path.read_text())
    schema["properties"]["gpu_temp_c"] = {"type": "number"}
    schema["required"].append("gpu_temp_c")
    path.write_text(json.dumps(schema))
    return out


def test_the_generator_refuses_to_overwrite_a_released_schema(tmp_path: Path) -> None:
    out = _released_copy(tmp_path)
    before = {p.name: p.read_bytes() for p in (out / "schemas").iterdir()}
    with pytest.raises(IncompatibleContractError) as refused:
        write_schema_docs(out)
    assert [(i.message_type, i.field, i.rule) for i in refused.value.found] == [
        ("trainer.metrics.progress.v1", "gpu_temp_c", REMOVED_FIELD)
    ]
    assert {p.name: p.read_bytes() for p in (out / "schemas").iterdir()} == before
    assert not (out / "catalogue.md").exists()
    result = CliRunner().invoke(app, ["schema", "--out", str(out)])
    assert result.exit_code == 1
    assert (
        "trainer.metrics.progress.v1: field `gpu_temp_c`: removed or renamed field" in result.output
    )
    assert "(.v2)" in result.output


def _field(node: dict[str, JsonValue], *, closed: bool = False) -> dict[str, JsonValue]:
    schema: dict[str, JsonValue] = {"type": "object", "properties": {"f": node}}
    if closed:
        schema["additionalProperties"] = False
    return schema


# (released field schema, current field schema, the rule broken or None; where, if deeper)
RAW: list[tuple[str, dict[str, JsonValue], dict[str, JsonValue], str | None, str]] = [
    ("integer widened to number", {"type": "integer"}, {"type": "number"}, None, "f"),
    ("number narrowed to integer", {"type": "number"}, {"type": "integer"}, NARROWED_TYPE, "f"),
    ("any value narrowed", {}, {"type": "string"}, NARROWED_TYPE, "f"),
    ("pattern added", {"type": "string"}, {"type": "string", "pattern": "^a"}, NARROWED_TYPE, "f"),
    ("maxLength lowered", {"maxLength": 9}, {"maxLength": 8}, NARROWED_TYPE, "f"),
    ("minItems raised", {"type": "array"}, {"type": "array", "minItems": 1}, NARROWED_TYPE, "f"),
    ("exclusive at the same bound", {"minimum": 0}, {"exclusiveMinimum": 0}, NARROWED_TYPE, "f"),
    ("inclusive at the same bound", {"exclusiveMaximum": 1}, {"maximum": 1}, None, "f"),
    ("minimum lowered", {"minimum": 2}, {"minimum": 1}, None, "f"),
    ("const changed", {"const": "a"}, {"const": "b"}, NARROWED_TYPE, "f"),
    ("enum where any string was", {"type": "string"}, {"enum": ["a"]}, NARROWED_TYPE, "f"),
    (
        "array items narrowed",
        {"type": "array", "items": {"type": "number"}},
        {"type": "array", "items": {"type": "integer"}},
        NARROWED_TYPE,
        "f[]",
    ),
    (
        "tuple member narrowed",
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}]},
        {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]},
        NARROWED_TYPE,
        "f[1]",
    ),
    (
        "map values narrowed",
        {"type": "object", "additionalProperties": {"type": "number"}},
        {"type": "object", "additionalProperties": {"type": "integer"}},
        NARROWED_TYPE,
        "f.*",
    ),
    (
        "map keys bounded",
        {"type": "object", "additionalProperties": {"type": "string"}},
        {"type": "object", "propertyNames": {"maxLength": 8}},
        NARROWED_TYPE,
        "f.(key)",
    ),
    (
        "object closed",
        {"type": "object", "properties": {}},
        {"type": "object", "properties": {}, "additionalProperties": False},
        NARROWED_TYPE,
        "f",
    ),
    (
        "new constraint",
        {"type": "object"},
        {"type": "object", "allOf": [{"not": {"required": ["a", "b"]}}]},
        NARROWED_TYPE,
        "f",
    ),
    (
        "union option dropped",
        {"anyOf": [{"type": "string"}, {"type": "boolean"}]},
        {"type": "string"},
        NARROWED_TYPE,
        "f",
    ),
    (
        "union option added",
        {"type": "string"},
        {"anyOf": [{"type": "string"}, {"type": "null"}]},
        None,
        "f",
    ),
    (
        "variant by reference",
        {"$ref": "#/$defs/A"},
        {"oneOf": [{"$ref": "#/$defs/A"}, {"const": 3}]},
        None,
        "f",
    ),
    (
        "object variant dropped",
        {"anyOf": [{"$ref": "#/$defs/A"}, {"type": "string"}]},
        {"type": "string"},
        NARROWED_TYPE,
        "f",
    ),
    (
        "null no longer accepted",
        {"type": ["string", "null"]},
        {"type": "string"},
        NARROWED_TYPE,
        "f",
    ),
    ("null added", {"type": "string"}, {"type": ["string", "null"]}, None, "f"),
    ("minimum added", {"type": "number"}, {"type": "number", "minimum": 0}, NARROWED_TYPE, "f"),
    ("unknown reference", {"$ref": "#/$defs/Gone"}, {"$ref": "#/$defs/Gone"}, None, "f"),
]


@pytest.mark.parametrize(
    ("released", "current", "rule", "where"), [r[1:] for r in RAW], ids=[r[0] for r in RAW]
)
def test_the_rules_on_raw_schemas(
    released: dict[str, JsonValue], current: dict[str, JsonValue], rule: str | None, where: str
) -> None:
    defs: dict[str, JsonValue] = {"A": {"title": "A", "type": "object", "properties": {}}}
    old, new = {**_field(released), "$defs": defs}, {**_field(current), "$defs": defs}
    found = check_backward("t.v1", old, new)
    assert [(i.field, i.rule) for i in found] == ([] if rule is None else [(where, rule)])
    assert all(str(i).startswith(f"t.v1: field `{where}`: ") for i in found)


def _issues(old: dict[str, JsonValue], new: dict[str, JsonValue]) -> list[str]:
    return [str(i) for i in check_backward("t.v1", old, new)]


def test_enum_values_keep_their_json_types() -> None:
    released = _field({"enum": [None, True, 3, 1.5, "a", [1], {"k": 1}]})
    assert _issues(released, _field({"type": ["string", "integer"]})) == [
        "t.v1: field `f`: narrowed type: no longer accepts array or boolean or null or number "
        "or object"
    ]


def test_a_boolean_schema_admits_any_value() -> None:
    # JSON Schema's `true` (pydantic does not write it): narrowing it is caught like `{}`'s.
    old: dict[str, JsonValue] = {"type": "object", "properties": {"f": True}}
    tuple_old: dict[str, JsonValue] = {"type": "array", "prefixItems": [True]}
    tuple_new: dict[str, JsonValue] = {"type": "array", "prefixItems": [{"type": "string"}]}
    assert _issues(old, _field({"type": "string"})) == [
        "t.v1: field `f`: narrowed type: no longer accepts any value"
    ]
    assert _issues(_field({"type": "string"}), {"type": "object", "properties": {"f": True}}) == []
    assert _issues(tuple_old, tuple_new) == [
        "t.v1: field `[0]`: narrowed type: no longer accepts any value"
    ]


def test_recursive_and_cyclic_references_end() -> None:
    """A model that holds itself (a tree) is compared to a bounded depth; a reference that
    names itself resolves to nothing more."""
    node: dict[str, JsonValue] = {
        "title": "Node",
        "type": "object",
        "properties": {"child": {"$ref": "#/$defs/Node"}, "size": {"type": "number"}},
    }
    narrowed: dict[str, JsonValue] = {**node, "properties": {"child": {"$ref": "#/$defs/Node"}}}
    old: dict[str, JsonValue] = {"$ref": "#/$defs/Node", "$defs": {"Node": node}}
    new: dict[str, JsonValue] = {"$ref": "#/$defs/Node", "$defs": {"Node": narrowed}}
    assert _issues(old, old) == []
    removed = _issues(old, new)
    # Depth first: the deepest level the check reaches is reported first, the top last.
    assert removed[-2:] == [
        "t.v1: field `child.size`: removed or renamed field: readers of the released version "
        "use it",
        "t.v1: field `size`: removed or renamed field: readers of the released version use it",
    ]
    assert len(removed) == 65  # depths 0 to 64, where the check stops
    loop: dict[str, JsonValue] = {"$ref": "#/$defs/L", "$defs": {"L": {"$ref": "#/$defs/L"}}}
    assert _issues(loop, loop) == []
