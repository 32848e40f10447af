"""Log lines: what a job's run logged, published on the logs topic keyed by ``job_id``.

Best-effort, unlike events: a line may be lost (the service's buffer is bounded and drops
the oldest while the broker is away) or, after a producer retry, appear twice; ``line``
numbers each attempt's lines from 0, so a reader can tell both. Tolerant: unknown fields are
ignored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue, field_serializer

from .commands import JobId

MAX_MESSAGE_CHARS = 2_000
MAX_EXCEPTION_CHARS = 8_000


def _now() -> datetime:
    return datetime.now(UTC)


class LogLineV1(BaseModel):
    """One record a job's run logged (the worker's or the training engine's)."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    type: Literal["trainer.job.log.v1"] = "trainer.job.log.v1"
    job_id: JobId = Field(description="The job; also the Kafka message key.")
    attempt: int = Field(1, ge=1, description="Run of the job, 1 for the first.")
    line: int = Field(
        ge=0, description="Per attempt, +1 per line logged (gaps: lines dropped on the way)."
    )
    ts: AwareDatetime = Field(default_factory=_now, description="When it was logged, UTC.")
    level: str = Field(description="debug, info, warning, error or critical.")
    logger: str = Field("", description="The logger's name, e.g. model_trainer.pool.worker.")
    message: str = Field(max_length=MAX_MESSAGE_CHARS, description="The log event's text.")
    fields: dict[str, JsonValue] = Field(
        default_factory=dict, description="The record's other key-value pairs."
    )
    exception: str | None = Field(
        None,
        max_length=MAX_EXCEPTION_CHARS,
        description="The traceback, when the record carried one (its end kept).",
    )
    dropped: int = Field(
        0, ge=0, description="Lines of this job dropped just before this one (buffer full)."
    )

    @field_serializer("ts")
    def _rfc3339_utc(self, ts: datetime) -> str:
        return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
