"""Tolerant decoding of what the client reads: an event or state record it knows, or nothing.

A reader must outlive the service's next release: a JSON object whose ``type`` this client
does not know, or one it cannot read, is skipped (``None``), never an error.
"""

from __future__ import annotations

from typing import TypeGuard

from model_trainer_contracts import Event, FailedEventV1, JobStateV1, QueuedEventV1
from pydantic import JsonValue, TypeAdapter, ValidationError
from pydantic_core import from_json

# The queued event is one of the contracts' events now; the old name stays for callers.
QueuedNotice = QueuedEventV1
Update = Event
"""What the client reads from the events topic."""

_events: TypeAdapter[Event] = TypeAdapter(Event)


def _json_object(data: bytes) -> dict[str, JsonValue] | None:
    try:
        parsed: JsonValue = from_json(data, allow_inf_nan=False)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def decode_update(data: bytes) -> Update | None:
    """The event in ``data``; ``None`` for an event type this client does not know, or for
    anything that is not a readable event."""
    parsed = _json_object(data)
    if parsed is None:
        return None
    try:
        return _events.validate_python(parsed)
    except ValidationError:
        return None


def decode_state(data: bytes) -> JobStateV1 | None:
    """The job state in a state-topic record; ``None`` for a tombstone or an unreadable one
    (the service's records from before ``JobStateV1`` included)."""
    parsed = _json_object(data) if data else None
    if parsed is None:
        return None
    try:
        return JobStateV1.model_validate(parsed)
    except ValidationError:
        return None


def is_rejection(event: Update) -> TypeGuard[FailedEventV1]:
    """A failed event answering a refused command: it does not end an accepted job."""
    return isinstance(event, FailedEventV1) and event.details.get("command_rejected") is True
