"""BACKWARD compatibility of a message's JSON Schema with its released version.

A schema registry's BACKWARD rule: a reader built from the new schema reads every message
written under the released one. Kafka keeps old records, so this holds for events as well as
commands: a consumer upgraded today still replays last month's events. On top of that, a field
may not disappear, even from a tolerant event, because the consumers of other teams read it.
Breaking any of this takes a new message version (``.v2``) next to the released one.

Pure functions over JSON Schema documents (draft 2020-12, as pydantic writes them), so the
check needs nothing but the committed files and the current models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from pydantic import JsonValue

JsonObject = dict[str, JsonValue]

REMOVED_FIELD: Final = "removed or renamed field"
NEW_REQUIRED_FIELD: Final = "new required field"
NARROWED_TYPE: Final = "narrowed type"
REMOVED_ENUM_VALUE: Final = "removed enum value"

_MAX_DEPTH = 64


@dataclass(frozen=True, order=True)
class Incompatibility:
    """One way the current schema refuses a message the released schema accepted."""

    message_type: str
    field: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.message_type}: field `{self.field}`: {self.rule}: {self.detail}"


def check_backward(
    message_type: str, released: JsonObject, current: JsonObject
) -> list[Incompatibility]:
    """Every way ``current`` fails to read what ``released`` describes, in field order."""
    checker = _Checker(message_type, released, current)
    checker.node(released, current, "", 0)
    return checker.found


def _object(value: JsonValue) -> JsonObject:
    """A JSON object as it is; anything else (absent, or a boolean schema, which pydantic does
    not write) as the empty object: a schema that admits any value."""
    return value if isinstance(value, dict) else {}


def _resolve(node: JsonObject, defs: JsonObject) -> JsonObject:
    seen: set[str] = set()
    while isinstance(ref := node.get("$ref"), str) and ref.startswith("#/$defs/"):
        if ref in seen:
            break
        seen.add(ref)
        target = defs.get(ref.removeprefix("#/$defs/"))
        if not isinstance(target, dict):
            break
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _types(node: JsonObject) -> set[str] | None:
    """The JSON types a node admits; ``None`` for any."""
    kind = node.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return {str(k) for k in kind}
    values = _values(node)
    if values is not None:
        return {_json_type(v) for v in values}
    return None


def _json_type(value: JsonValue) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _values(node: JsonObject) -> list[JsonValue] | None:
    """The only values a node admits (``const`` or ``enum``); ``None`` when not enumerated."""
    if "const" in node:
        return [node["const"]]
    enum = node.get("enum")
    return list(enum) if isinstance(enum, list) else None


def _options(node: JsonObject) -> list[JsonObject] | None:
    for union in ("anyOf", "oneOf"):
        options = node.get(union)
        if isinstance(options, list):
            return [o for o in options if isinstance(o, dict)]
    return None


def _describe(node: JsonObject) -> str:
    values = _values(node)
    if values is not None:
        return " or ".join(json.dumps(v) for v in values)
    if isinstance(node.get("title"), str) and "properties" in node:
        return str(node["title"])
    types = _types(node)
    return "any value" if types is None else " or ".join(sorted(types))


def _number(node: JsonObject, key: str) -> float | None:
    value = node.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class _Checker:
    def __init__(self, message_type: str, released: JsonObject, current: JsonObject) -> None:
        self.message_type = message_type
        self.old_defs = _object(released.get("$defs"))
        self.new_defs = _object(current.get("$defs"))
        self.found: list[Incompatibility] = []

    def add(self, field: str, rule: str, detail: str) -> None:
        self.found.append(Incompatibility(self.message_type, field or "(message)", rule, detail))

    def issues(
        self, old: JsonObject, new: JsonObject, path: str, depth: int
    ) -> list[Incompatibility]:
        """What comparing two nodes would report, without reporting it."""
        probe = _Checker(self.message_type, {}, {})
        probe.old_defs, probe.new_defs = self.old_defs, self.new_defs
        probe.node(old, new, path, depth)
        return probe.found

    def node(self, old: JsonObject, new: JsonObject, path: str, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        old, new = _resolve(old, self.old_defs), _resolve(new, self.new_defs)
        old_options, new_options = _options(old), _options(new)
        if old_options is None and new_options is None:
            self.single(old, new, path, depth)
            return
        for option in old_options if old_options is not None else [old]:
            self.option(_resolve(option, self.old_defs), new_options or [new], path, depth)

    def option(self, old: JsonObject, candidates: list[JsonObject], path: str, depth: int) -> None:
        """One alternative of the released union must be read by some current alternative."""
        best: list[Incompatibility] | None = None
        old_types = _types(old)
        for candidate in candidates:
            candidate = _resolve(candidate, self.new_defs)
            found = self.issues(old, candidate, path, depth + 1)
            if not found:
                return
            same_kind = old.get("title") == candidate.get("title") or (
                old_types is not None and old_types == _types(candidate) and _values(old) is None
            )
            if same_kind and (best is None or len(found) < len(best)):
                best = found
        if best is not None:
            self.found += best
        else:
            self.add(path, NARROWED_TYPE, f"no longer accepts {_describe(old)}")

    def single(self, old: JsonObject, new: JsonObject, path: str, depth: int) -> None:
        old_types, new_types = _types(old), _types(new)
        if new_types is not None:
            lost = (
                ["any value"]
                if old_types is None
                else sorted(
                    t
                    for t in old_types - new_types
                    if not (t == "integer" and "number" in new_types)
                )
            )
            if lost:
                self.add(path, NARROWED_TYPE, f"no longer accepts {' or '.join(lost)}")
                return
        self.values(old, new, path)
        self.bounds(old, new, path)
        if any(key in new for key in ("properties", "additionalProperties", "propertyNames")):
            self.object(old, new, path, depth)
        old_items, new_items = old.get("items"), new.get("items")
        if isinstance(new_items, dict):
            self.node(
                old_items if isinstance(old_items, dict) else {}, new_items, f"{path}[]", depth + 1
            )
        old_prefix, new_prefix = old.get("prefixItems"), new.get("prefixItems")
        if isinstance(old_prefix, list) and isinstance(new_prefix, list):
            for index, (o, n) in enumerate(zip(old_prefix, new_prefix, strict=False)):
                self.node(_object(o), _object(n), f"{path}[{index}]", depth + 1)
        old_all, new_all = old.get("allOf"), new.get("allOf")
        kept = old_all if isinstance(old_all, list) else []
        added = [c for c in new_all if c not in kept] if isinstance(new_all, list) else []
        for constraint in added:
            self.add(
                path, NARROWED_TYPE, f"new constraint {json.dumps(constraint, sort_keys=True)}"
            )

    def values(self, old: JsonObject, new: JsonObject, path: str) -> None:
        new_values = _values(new)
        if new_values is None:
            return
        old_values = _values(old)
        if old_values is None:
            self.add(path, NARROWED_TYPE, f"now only {_describe(new)}, was {_describe(old)}")
            return
        removed = [v for v in old_values if v not in new_values]
        if removed:
            rule = REMOVED_ENUM_VALUE if "enum" in old else NARROWED_TYPE
            self.add(path, rule, ", ".join(json.dumps(v) for v in removed) + " no longer accepted")

    def bounds(self, old: JsonObject, new: JsonObject, path: str) -> None:
        for side, keys in (
            ("minimum", ("minimum", "exclusiveMinimum")),
            ("maximum", ("maximum", "exclusiveMaximum")),
        ):
            sign = 1.0 if side == "minimum" else -1.0
            was, now = _limit(old, keys, sign), _limit(new, keys, sign)
            if now is not None and (was is None or now > was):
                self.add(
                    path, NARROWED_TYPE, f"{_show(now, keys, sign)}, was {_show(was, keys, sign)}"
                )
        for key in ("minLength", "minItems", "minProperties"):
            least, now_least = _number(old, key) or 0.0, _number(new, key) or 0.0
            if now_least > least:
                self.add(path, NARROWED_TYPE, f"{key} {_num(now_least)}, was {_num(least)}")
        for key in ("maxLength", "maxItems", "maxProperties"):
            was_max, now_max = _number(old, key), _number(new, key)
            if now_max is not None and (was_max is None or now_max < was_max):
                self.add(path, NARROWED_TYPE, f"{key} {_num(now_max)}, was {_bound(was_max)}")
        for key in ("pattern", "format"):
            if key in new and new.get(key) != old.get(key):
                self.add(
                    path,
                    NARROWED_TYPE,
                    f"{key} {json.dumps(new[key])}, was {json.dumps(old.get(key))}",
                )

    def object(self, old: JsonObject, new: JsonObject, path: str, depth: int) -> None:
        old_props, new_props = _object(old.get("properties")), _object(new.get("properties"))
        prefix = f"{path}." if path else ""
        for name, node in old_props.items():
            if name not in new_props:
                self.add(prefix + name, REMOVED_FIELD, "readers of the released version use it")
            else:
                self.node(_object(node), _object(new_props[name]), prefix + name, depth + 1)
        old_required = old.get("required", [])
        new_required = new.get("required", [])
        was_required = {str(n) for n in old_required} if isinstance(old_required, list) else set()
        for needed in new_required if isinstance(new_required, list) else []:
            if not isinstance(needed, str) or needed in was_required:
                continue
            detail = (
                "released messages may lack it"
                if needed in old_props
                else "released messages lack it; give it a default"
            )
            self.add(prefix + needed, NEW_REQUIRED_FIELD, detail)
        old_extra, new_extra = old.get("additionalProperties"), new.get("additionalProperties")
        if new_extra is False and old_extra is not False:
            self.add(path, NARROWED_TYPE, "no longer accepts fields it does not define")
        elif isinstance(new_extra, dict) and old_extra is not False:
            self.node(
                old_extra if isinstance(old_extra, dict) else {}, new_extra, f"{prefix}*", depth + 1
            )
        old_keys, new_keys = old.get("propertyNames"), new.get("propertyNames")
        if isinstance(new_keys, dict):
            self.node(
                old_keys if isinstance(old_keys, dict) else {},
                new_keys,
                f"{prefix}(key)",
                depth + 1,
            )


def _bound(value: float | None) -> str:
    return "unbounded" if value is None else _num(value)


def _num(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def _limit(node: JsonObject, keys: tuple[str, str], sign: float) -> tuple[float, bool] | None:
    """The tightest lower (``sign`` 1) or upper (-1) bound as a comparable pair: a larger
    pair is narrower; an exclusive bound is narrower than the inclusive one at the same value."""
    inclusive, exclusive = _number(node, keys[0]), _number(node, keys[1])
    pairs = [
        (sign * v, flag) for v, flag in ((inclusive, False), (exclusive, True)) if v is not None
    ]
    return max(pairs) if pairs else None


def _show(limit: tuple[float, bool] | None, keys: tuple[str, str], sign: float) -> str:
    if limit is None:
        return f"no {keys[0]}"
    return f"{keys[1] if limit[1] else keys[0]} {_num(sign * limit[0])}"
