"""Encoding: compact UTF-8 JSON bodies and CloudEvents (Kafka binding, binary mode) headers.

``decode_*`` return a typed value or raise :class:`ModelTrainerError`; they never raise
anything else, whatever the bytes.
"""

from __future__ import annotations

import difflib
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import get_args

from pydantic import BaseModel, JsonValue, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails, from_json

from .commands import JOB_ID_PATTERN, CancelJobV1, Command, SubmitJobV1, aliases_of
from .errors import ModelTrainerError, ModelTrainerErrorCode
from .events import EVENT_TYPES, Event, EventBase

MAX_COMMAND_BYTES = 2_000_000
CE_SOURCE = "model-trainer"
CONTENT_TYPE = "application/json"

_commands: TypeAdapter[Command] = TypeAdapter(Command)
_events: TypeAdapter[Event] = TypeAdapter(Event)
_job_id = re.compile(JOB_ID_PATTERN)

Headers = list[tuple[str, bytes]]


def encode(message: BaseModel) -> bytes:
    """A command or event as compact UTF-8 JSON."""
    return message.model_dump_json().encode()


_DISCRIMINATORS = ("type", "backend", "kind")
# Tags of the discriminated unions; pydantic puts the chosen tag into an error's location.
_TAGS = frozenset(
    {"trainer.job.submit.v1", "trainer.job.cancel.v1", "char_lstm", "gpt2", "char", "bpe", "job"}
    | {"trainer.metrics.config.v1", "trainer.metrics.progress.v1", "trainer.metrics.download.v1"}
    | {"trainer.metrics.completed.v1", "trainer.job.failed.v1", "trainer.job.queued.v1"}
)
_COMMAND_MODELS: tuple[type[BaseModel], ...] = (SubmitJobV1, CancelJobV1)


def _field_path(loc: Sequence[int | str], data: JsonValue) -> list[str]:
    """The location as the publisher wrote it: union tags dropped, at any depth."""
    path: list[str] = []
    node: JsonValue = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str):
            is_tag = part in _TAGS and (
                part not in node  # e.g. a model's backend, filled in from the job's
                or any(node.get(name) == part for name in _DISCRIMINATORS)
            )
            if is_tag:
                continue
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
        path.append(str(part))
    return path


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The models a field's annotation holds (through unions, optionals and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in get_args(annotation) for model in _models_in(arg)]


def _is_tagged(model: type[BaseModel], tag: str) -> bool:
    fields = model.model_fields
    return any(name in fields and fields[name].default == tag for name in _DISCRIMINATORS)


def _models_at(loc: Sequence[int | str], roots: Sequence[type[BaseModel]]) -> list[type[BaseModel]]:
    """The models that may hold the object at ``loc`` (an error's location, tags included).
    No command holds a model in a list, so every part is a field or a tag (an index would
    match neither, leaving no model: the error then names no close field)."""
    models = list(roots)
    for part in map(str, loc):
        tagged = [model for model in models if _is_tagged(model, part)]
        models = tagged or [
            inner
            for model in models
            if (name := aliases_of(model).get(part, part)) in model.model_fields
            for inner in _models_in(model.model_fields[name].annotation)
        ]
    return models


def _unknown_field(key: str, parent: Sequence[int | str], message: str) -> str:
    """``message`` for a refused ``key``, saying when it is another name for a field that is
    also given, or naming the known field it is closest to (a misspelling)."""
    models = _models_at(parent, _COMMAND_MODELS)
    for model in models:
        canonical = aliases_of(model).get(key)
        if canonical is not None:
            return f"{key} is another name for {canonical}, which is also given: give one"
    known = {name for model in models for name in [*model.model_fields, *aliases_of(model)]}
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"{message}; did you mean {close[0]}?" if close else message


def _violation(err: ErrorDetails, data: JsonValue) -> JsonValue:
    path = _field_path(err["loc"], data)
    message = err["msg"]
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        # the offending field is the discriminator itself, e.g. ``model.backend``
        path.append(str(err.get("ctx", {}).get("discriminator", "type")).strip("'"))
    elif err["type"] == "extra_forbidden" and err["loc"] and isinstance(err["loc"][-1], str):
        message = _unknown_field(err["loc"][-1], err["loc"][:-1], message)
    return {"field": ".".join(path) or "(root)", "error": message}


def _violations(exc: ValidationError, data: JsonValue) -> list[JsonValue]:
    """One ``{field, error}`` per failure, the field a dotted path into the message."""
    errors = exc.errors(include_url=False, include_input=False)
    return [_violation(err, data) for err in errors]


def _loads(data: bytes) -> JsonValue:
    """Strict RFC 8259 JSON: no NaN/Infinity tokens, no lone surrogates, nesting limited.

    Raises ValueError (UnicodeDecodeError for bytes that are not UTF-8).
    """
    text = data.decode("utf-8")
    parsed: JsonValue = from_json(text, allow_inf_nan=False)
    return parsed


def _parse_json(data: bytes, code: ModelTrainerErrorCode) -> dict[str, JsonValue]:
    try:
        parsed = _loads(data)
    except UnicodeDecodeError as exc:
        raise ModelTrainerError(code, f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except (ValueError, RecursionError) as exc:
        raise ModelTrainerError(code, f"not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ModelTrainerError(code, f"expected a JSON object, got {type(parsed).__name__}")
    return parsed


def decode_command(data: bytes, *, max_bytes: int = MAX_COMMAND_BYTES) -> Command:
    """Decode a command, or raise COMMAND_TOO_LARGE, COMMAND_UNDECODABLE or COMMAND_INVALID.

    A COMMAND_INVALID error names each offending field in ``details["violations"]``.
    """
    if len(data) > max_bytes:
        raise ModelTrainerError(
            ModelTrainerErrorCode.COMMAND_TOO_LARGE,
            f"command is {len(data)} bytes; the limit is {max_bytes}",
            details={"size": len(data), "limit": max_bytes},
        )
    parsed = _parse_json(data, ModelTrainerErrorCode.COMMAND_UNDECODABLE)
    try:
        return _commands.validate_python(parsed)
    except ValidationError as exc:
        violations = _violations(exc, parsed)
        first = violations[0] if violations else {}
        summary = f"{first['field']}: {first['error']}" if isinstance(first, dict) else "invalid"
        more = f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
        raise ModelTrainerError(
            ModelTrainerErrorCode.COMMAND_INVALID,
            f"invalid command: {summary}{more}",
            details={"violations": violations},
        ) from None


def decode_event(data: bytes) -> Event:
    """Decode an event; unknown fields are ignored. Raises ModelTrainerError (COMMAND_INVALID
    for a body that is JSON but not a known event, COMMAND_UNDECODABLE for one that is not)."""
    return _validate_event(_parse_json(data, ModelTrainerErrorCode.COMMAND_UNDECODABLE))


def decode_event_tolerant(data: bytes) -> Event | None:
    """Like :func:`decode_event`, but None for a JSON object whose ``type`` is a string naming
    no event this reader knows (an event type newer than this contract, or a message that is
    not an event), so a reader skips what it cannot know. Still raises ModelTrainerError for
    bytes that are not a JSON object, a missing ``type``, and a known type that fails
    validation."""
    parsed = _parse_json(data, ModelTrainerErrorCode.COMMAND_UNDECODABLE)
    kind = parsed.get("type")
    if isinstance(kind, str) and kind not in EVENT_TYPES:
        return None
    return _validate_event(parsed)


def _validate_event(parsed: dict[str, JsonValue]) -> Event:
    try:
        return _events.validate_python(parsed)
    except ValidationError as exc:
        raise ModelTrainerError(
            ModelTrainerErrorCode.COMMAND_INVALID,
            "invalid event",
            details={"violations": _violations(exc, parsed)},
        ) from None


def _salvage(data: bytes, field: str) -> JsonValue:
    try:
        parsed = _loads(data)
    except (ValueError, RecursionError):
        return None
    return parsed.get(field) if isinstance(parsed, dict) else None


def salvage_job_id(data: bytes) -> str | None:
    """The ``job_id`` of a command that failed to decode, when one can still be read."""
    job_id = _salvage(data, "job_id")
    return job_id if isinstance(job_id, str) and _job_id.fullmatch(job_id) else None


def salvage_user_id(data: bytes) -> int:
    """The ``user_id`` of an undecodable command when it is a non-negative int, else 0."""
    user_id = _salvage(data, "user_id")
    ok = isinstance(user_id, int) and not isinstance(user_id, bool) and 0 <= user_id < 2**63
    return user_id if ok and isinstance(user_id, int) else 0


def ce_headers(
    message: SubmitJobV1 | CancelJobV1 | EventBase, *, source: str = CE_SOURCE
) -> Headers:
    """CloudEvents 1.0 Kafka protocol binding, binary content mode, for a command or event.

    Events reuse their own ``event_id`` and ``ts``; commands get a fresh id and the current time.
    """
    if isinstance(message, EventBase):
        ce_id, ce_time = message.event_id, message.model_dump(mode="json")["ts"]
    else:
        ce_id = str(uuid.uuid4())
        ce_time = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", ce_id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", message.type.encode()),
        ("ce_time", str(ce_time).encode()),
        ("content-type", CONTENT_TYPE.encode()),
    ]
