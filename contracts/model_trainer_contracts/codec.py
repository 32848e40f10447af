"""Encoding: compact UTF-8 JSON bodies and CloudEvents (Kafka binding, binary mode) headers.

``decode_*`` return a typed value or raise :class:`ModelTrainerError`; they never raise
anything else, whatever the bytes.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, JsonValue, TypeAdapter, ValidationError

from .commands import JOB_ID_PATTERN, CancelJobV1, Command, SubmitJobV1
from .errors import ModelTrainerError, ModelTrainerErrorCode
from .events import Event, EventBase

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


def _violations(exc: ValidationError) -> list[JsonValue]:
    """One ``{field, error}`` per failure, the union's type tag left out of the field path."""
    found: list[JsonValue] = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in err["loc"]]
        if loc and loc[0].startswith("trainer."):
            loc = loc[1:]
        found.append({"field": ".".join(loc) or "(root)", "error": err["msg"]})
    return found


def _parse_json(data: bytes, code: ModelTrainerErrorCode) -> JsonValue:
    try:
        parsed: JsonValue = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelTrainerError(code, f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
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
        violations = _violations(exc)
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
    parsed = _parse_json(data, ModelTrainerErrorCode.COMMAND_UNDECODABLE)
    try:
        return _events.validate_python(parsed)
    except ValidationError as exc:
        raise ModelTrainerError(
            ModelTrainerErrorCode.COMMAND_INVALID,
            "invalid event",
            details={"violations": _violations(exc)},
        ) from None


def salvage_job_id(data: bytes) -> str | None:
    """The ``job_id`` of a command that failed to decode, when one can still be read."""
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    job_id = parsed.get("job_id") if isinstance(parsed, dict) else None
    return job_id if isinstance(job_id, str) and _job_id.fullmatch(job_id) else None


def salvage_user_id(data: bytes) -> int:
    """The ``user_id`` of an undecodable command when it is a non-negative int, else 0."""
    try:
        parsed = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return 0
    user_id = parsed.get("user_id") if isinstance(parsed, dict) else None
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
