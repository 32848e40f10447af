"""Event envelopes and failure events, shared by the service process and its workers.

Kept free of torch so the service process can build events without importing the engine.
"""

from __future__ import annotations

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


def failed_event(envelope: Envelope, error: ModelTrainerError) -> FailedEventV1:
    """The ``trainer.job.failed.v1`` event that reports ``error``."""
    details: dict[str, JsonValue] = dict(error.details)
    return FailedEventV1(
        **envelope,
        code=error.code,
        message=error.message,
        retryable=error.retryable,
        http_status=error.http_status,
        stage=error.stage,
        details=details,
    )
