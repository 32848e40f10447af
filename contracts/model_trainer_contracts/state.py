"""Job state: the value of a job's record on the service's compacted state topic.

One record per job, keyed by ``job_id``, written in the same Kafka transaction as the events
it describes. The service reads it to resume and de-duplicate; clients read it to list jobs
(``model-trainer jobs``) without reading every event. Tolerant: unknown fields are ignored.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_serializer

from .commands import JobId, LabelKey, LabelValue


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    # Only refusals of commands were published for this job_id (no job accepted): its
    # last_seq keeps the numbering unique if a job with this id is submitted later.
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


def _now() -> datetime:
    return datetime.now(UTC)


class JobStateV1(BaseModel):
    """The latest known state of one job."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["trainer.job.state.v1"] = "trainer.job.state.v1"
    job_id: JobId
    user_id: int = Field(0, ge=0)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    tenant: str = Field(
        "default",
        max_length=64,
        description="Whose commands topic submitted the job ('default': the plain topic).",
    )
    status: JobStatus
    request_digest: str = Field(description="sha256 of the submit command's spec (conflicts).")
    partition: int = Field(-1, ge=-1, description="Commands partition that owns the job.")
    offset: int | None = Field(
        None,
        ge=0,
        description="Offset of the job's submit on its commands partition: the state is "
        "deleted only once the partition's commit has passed it.",
    )
    attempt: int = Field(0, ge=0, description="Runs started so far (the events' attempt).")
    failures: int = Field(0, ge=0, description="Infrastructure failures (worker death, stall).")
    last_seq: int = Field(-1, ge=-1, description="Highest seq published; -1 before any.")
    error_code: str | None = Field(None, description="The failed event's code, once failed.")
    error_message: str | None = Field(
        None, description="Why a command for this job_id was refused (status rejected)."
    )
    submitted_at: AwareDatetime = Field(default_factory=_now)
    updated_at: AwareDatetime = Field(default_factory=_now)

    @field_serializer("submitted_at", "updated_at")
    def _rfc3339_utc(self, ts: datetime) -> str:
        return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
