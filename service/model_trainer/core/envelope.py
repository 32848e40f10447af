"""Event envelopes and failure events, shared by the service process and its workers.

Kept free of torch so the service process can build events without importing the engine.
"""

from __future__ import annotations

import json
from typing import TypedDict

from model_trainer_contracts import FailedEventV1, ModelTrainerError
from pydantic import JsonValue


class Envelope(TypedDict):
    """The fields every event of a job carries; unpack into an event's constructor."""

    job_id: str
    user_id: int
    seq: int
    attempt: int
    labels: dict[str, str]


MAX_MESSAGE_CHARS = 4000
MAX_DETAILS_BYTES = 64_000  # a failed event stays far under Kafka's 1 MB record limit
_CLIP_CHARS = 256
_CLIP_ITEMS = 20


def failed_event(envelope: Envelope, error: ModelTrainerError) -> FailedEventV1:
    """The ``trainer.job.failed.v1`` event that reports ``error``, bounded in size: a huge
    message is cut, and huge details keep their first items, each clipped."""
    message = error.message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + f"... ({len(error.message)} characters)"
    details: dict[str, JsonValue] = dict(error.details)
    size = len(json.dumps(details))
    if size > MAX_DETAILS_BYTES:
        clipped = {key: _clip(value) for key, value in details.items()}
        details = {**clipped, "truncated_from_bytes": size}
        if len(json.dumps(details)) > MAX_DETAILS_BYTES:
            details = {"truncated_from_bytes": size}
    return FailedEventV1(
        **envelope,
        code=error.code,
        message=message,
        retryable=error.retryable,
        http_status=error.http_status,
        stage=error.stage,
        details=details,
    )


def _clip(value: JsonValue) -> JsonValue:
    if isinstance(value, str):
        return value if len(value) <= _CLIP_CHARS else value[:_CLIP_CHARS] + "..."
    if isinstance(value, list):
        return [_clip(item) for item in value[:_CLIP_ITEMS]]
    if isinstance(value, dict):
        return {
            str(key)[:_CLIP_CHARS]: _clip(item) for key, item in list(value.items())[:_CLIP_ITEMS]
        }
    return value
